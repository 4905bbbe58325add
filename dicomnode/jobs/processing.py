"""The processor the node's workers use: the same load → segment → encode path as
``dicomnode process``, with one warm runtime shared by every job of the service."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from dicomnode.config import Config
from dicomnode.jobs.service import SeriesIdentity


class PipelineProcessor:
    """Builds each pipeline once (models stay warm in the runtime) and runs it on spool files.

    torch and nnU-Net are imported after the node starts listening, in the background while
    no association is open (:meth:`warm_up_steps`): start-up stays quick and ingest is not
    slowed.
    """

    def __init__(self, config: Config):
        self.config = config
        self._pipelines: dict[str, Any] = {}
        self._runtime: Any = None
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Any:
        from dicomnode.models.runtime import NnUNetRuntime

        if self._runtime is None:
            self._runtime = NnUNetRuntime.from_config(self.config.models)
        return self._runtime

    def warm_up_steps(self) -> list[Callable[[], None]]:
        """Imports the first job would otherwise pay for (a second or two for the encoders on
        a small machine, several for torch and nnU-Net), as separate steps so that the node
        can run them between associations (:meth:`dicomnode.service.node.Node._warm_up`)."""

        def encoders() -> None:
            import converters.volume  # noqa: F401 - SimpleITK, the pixel decoders
            import dicomnode.models.process  # noqa: F401

            # highdicom reads its IOD and module tables (JSON) on the first SEG it builds,
            # ~1 s on a small machine: build a throw-away one now rather than in the first job.
            _encode_tiny_series()

        def runtime() -> None:
            with self._lock:
                runtime = self.runtime
            runtime.device  # noqa: B018 - resolving it imports torch (and initialises CUDA)

        def nnunet() -> None:
            import nnunetv2.inference.predict_from_raw_data  # noqa: F401
            # what loading the first model imports (matplotlib, seaborn: ~1 s)
            import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401

        return [encoders, runtime, nnunet]

    def pipeline(self, name: str) -> Any:
        from dicomnode.models.pipelines import create_pipeline

        with self._lock:
            if name not in self._pipelines:
                self._pipelines[name] = create_pipeline(name, self.config.models, self.runtime)
            return self._pipelines[name]

    def __call__(self, pipeline: str, paths: list[Path], out: Path,
                 stage: Callable[[str], None], identity: SeriesIdentity) -> dict[str, Any]:
        import converters
        from dicomnode.models.process import write_result

        runner = self.pipeline(pipeline)
        runner.store.require(runner.model)  # a missing model fails before reading pixels
        volume = converters.load_series(paths)
        for dataset in volume.datasets:
            # Senders that leave these empty (real data does) get the UIDs the receiver derived,
            # so the SEG and SR reference the series as the node lists it.
            if not dataset.get("StudyInstanceUID"):
                dataset.StudyInstanceUID = identity.study_instance_uid
            if not dataset.get("SeriesInstanceUID"):
                dataset.SeriesInstanceUID = identity.series_instance_uid
        stage("segmenting")
        result = runner.run(volume)
        stage("encoding")
        write_result(out, volume, result, encode=True)
        return dict(json.loads((out / "result.json").read_text(encoding="utf-8")))


def _encode_tiny_series() -> None:
    """SEG, SR and preview of a 2-slice, 8 × 8 synthetic CT with one labelled voxel block:
    every lazily loaded table of the encoders (highdicom, pydicom codes, Pillow's font) is
    loaded once it returns. Nothing is written."""
    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from converters.results import PipelineMetadata, encode_results
    from converters.vocabulary import vertebral_bodies_ct

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sources = []
    for k in range(2):
        ds = Dataset()
        ds.file_meta = Dataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyID = "CT", "WARMUP", "Warm^Up", "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = 1, k + 1, ""
        ds.StudyDate, ds.StudyTime, ds.PatientSex, ds.PatientBirthDate = "20260101", "000000", "O", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "dicomnode"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        sources.append(ds)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 13  # L1 body: the L1 and L3 measurements run too
    image = np.full(labels.shape, 200.0, np.float32)
    encode_results(sources, labels, vertebral_bodies_ct(),
                   PipelineMetadata("warm-up", "warm-up", "0"), image=image)
