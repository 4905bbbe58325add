"""The local viewer stack (Orthanc + OHIF) that ``bash deploy/setup.sh`` leaves running."""

from dicomnode.viewer.stack import (
    OHIF_PACKAGE,
    ViewerStack,
    ViewerStackError,
    app_config_js,
    install_ohif,
    orthanc_config,
)

__all__ = ["OHIF_PACKAGE", "ViewerStack", "ViewerStackError", "app_config_js", "install_ohif",
           "orthanc_config"]
