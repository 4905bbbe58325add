"""The operator console's server and REST API (``web`` in ``config.yaml``), run inside
``dicomnode serve``: FastAPI under uvicorn in its own thread."""

from dicomnode.web.app import API, WebContext, build_app
from dicomnode.web.auth import WebError
from dicomnode.web.server import WebServer

__all__ = ["API", "WebContext", "WebError", "WebServer", "build_app"]
