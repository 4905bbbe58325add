"""The processor the node's workers use: the same load → segment → encode path as
``dicomnode process``, with one warm runtime shared by every job of the service."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from dicomnode.config import Config


class PipelineProcessor:
    """Builds each pipeline once (models stay warm in the runtime) and runs it on spool files."""

    def __init__(self, config: Config):
        from dicomnode.models.registry import ModelStore
        from dicomnode.models.runtime import NnUNetRuntime

        self.config = config
        self.store = ModelStore(config.models.path)
        self.runtime = NnUNetRuntime(config.models.device, max_models=config.models.keep_warm,
                                     threads=config.models.threads)
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def pipeline(self, name: str) -> Any:
        from dicomnode.models.pipelines import get_pipeline

        with self._lock:
            if name not in self._pipelines:
                model = self.config.models.pipeline_models.get(name)
                self._pipelines[name] = get_pipeline(name)(self.store, self.runtime, model)
            return self._pipelines[name]

    def __call__(self, pipeline: str, paths: list[Path], out: Path,
                 stage: Callable[[str], None]) -> dict[str, Any]:
        import converters
        from dicomnode.models.process import write_result

        runner = self.pipeline(pipeline)
        runner.store.require(runner.model)  # a missing model fails before reading pixels
        volume = converters.load_series(paths)
        stage("segmenting")
        result = runner.run(volume)
        stage("encoding")
        return write_result(out, volume, result, encode=True)
