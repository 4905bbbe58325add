"""The one configuration schema of the node (``config.yaml``).

Every key is declared here; unknown keys are errors. Values of the form ``${NAME}`` or
``${NAME:-default}`` are replaced by environment variables before validation, so secrets
(database passwords, STOW-RS credentials) need not be written into the file.

Sections are owned by the stage they configure: ``node`` (the receiver's network identity),
``storage`` (spool and database), ``assembly`` (series completion), ``logging``, ``models``
(weights and inference device), ``web`` (the operator console and its API), ``webhooks``
(job events POSTed over HTTP).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from converters.deid import Options

#: The default configuration shipped with the project (repository root).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yaml"

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1..16


def read_secret(env: str, file: Path | None) -> bytes | None:
    """A key named by an environment variable or held in a file (None: neither is set);
    raises ValueError when the one named is unset, unreadable or empty."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"environment variable {env} is not set")
        return value.encode()
    if file is not None:
        try:
            key = file.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc.strerror}") from None
        if not key:
            raise ValueError(f"{file} is empty")
        return key
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value) or len(stripped) > 16:
        raise ValueError("must be 1 to 16 printable characters without a backslash")
    return stripped


class TLSConfig(_Section):
    """TLS on the DICOM listener (DICOM PS3.15 B.1, port conventionally 2762)."""

    enabled: bool = False
    certificate: Path | None = Field(default=None, description="PEM server certificate")
    private_key: Path | None = Field(default=None, description="PEM private key of the certificate")
    ca_certificates: Path | None = Field(
        default=None, description="PEM bundle of CAs whose client certificates are accepted"
    )
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _complete(self) -> TLSConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required when TLS is enabled")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates is required to verify client certificates")
        return self


class NodeConfig(_Section):
    """Network identity of the DICOM listener (C-ECHO / C-STORE SCP)."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    #: Refuse associations whose Called AE Title is not ``ae_title``.
    require_called_ae_title: bool = True
    #: Calling AE Titles allowed to associate; empty means any.
    allowed_calling_ae_titles: list[str] = Field(default_factory=list)
    #: Source addresses or networks (CIDR) allowed to associate; empty means any.
    allowed_hosts: list[str] = Field(default_factory=list)
    max_associations: int = 16
    #: Processes that accept associations on the port (each a full C-STORE SCP with its own
    #: database connection; ``max_associations`` counts across them). ``auto``: one per CPU
    #: core, at most 4.
    receiver_processes: int | Literal["auto"] = "auto"
    #: Seconds of silence after which an association is aborted.
    network_timeout: float = 60.0
    #: Seconds a new connection may take to send its A-ASSOCIATE-RQ (and, with TLS, to finish
    #: its handshake) before it is closed: port probes must not hold association slots.
    acse_timeout: float = Field(default=5.0, gt=0)
    #: ``strict``: UIDs must follow PS3.5 9.1 exactly. ``lenient``: components with leading
    #: zeros (written by some real archives) are accepted and logged; anything else that is
    #: not digits and dots, or longer than 64 characters, is refused either way.
    uid_validation: Literal["strict", "lenient"] = "lenient"
    tls: TLSConfig = Field(default_factory=TLSConfig)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _aes(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        return value

    @field_validator("receiver_processes")
    @classmethod
    def _processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64, or auto")
        return value

    def receiver_process_count(self) -> int:
        """``receiver_processes`` with ``auto`` resolved on this machine."""
        if isinstance(self.receiver_processes, int):
            return self.receiver_processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(cores or 1, 4))

    @field_validator("max_associations")
    @classmethod
    def _max_assoc(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value


class StorageConfig(_Section):
    """Where received instances, results and the database live."""

    #: Root folder; the spool, outputs and the default SQLite database live under it.
    path: Path = Path("var")
    #: SQLAlchemy URL; empty means SQLite in ``path`` (``dicomnode.storage.layout``, WAL mode).
    database_url: str = ""
    #: Free space (bytes, or with a unit: "2 GB", "500 MiB") below which C-STORE is refused
    #: with 0xA700 (Out of Resources).
    min_free: int = 2 * 1024**3
    #: fsync each instance and its directory before acknowledging (crash safety).
    fsync: bool = True
    #: Largest data set accepted (inflated size for Deflated Explicit VR), enforced while the
    #: fragments arrive: larger ones are refused with ``instance-too-large``.
    max_instance_size: int = 2 * 1024**3
    #: Most bytes kept under ``spool/.quarantine`` (refused data sets); oldest removed first.
    quarantine_max: int = 1024**3
    #: Days a refused data set is kept under ``spool/.quarantine``.
    quarantine_days: float = Field(default=30.0, gt=0)

    @field_validator("min_free", "max_instance_size", "quarantine_max", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("min_free", "max_instance_size", "quarantine_max")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value



class AssemblyConfig(_Section):
    """When a series counts as complete."""

    #: Seconds without a new instance after which a series is complete.
    series_timeout: float = 60.0

    @field_validator("series_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    #: Log patient names and IDs. Off by default: logs leave the controlled environment.
    include_phi: bool = False
    #: Also write the log to this file (one JSON object a line).
    file: Path | None = None


class TotalSpineSegOptions(_Section):
    """Options of the ``totalspineseg`` pipeline."""

    #: Run step 1 only (cord, canal, discs, and vertebrae without level labels: faster, for
    #: sites that only need the canal or the discs), as the official ``--step1`` option.
    step1_only: bool = False


class ModelsConfig(_Section):
    """Model weights and the inference device."""

    #: Folder holding installed model weights (one sub-folder per registry entry).
    path: Path = Path("var/models")
    #: ``auto`` (first CUDA GPU, else CPU), ``cpu`` or ``cuda:N``.
    device: str = "auto"
    #: How many loaded models stay warm on the device (least recently used ones are unloaded).
    keep_warm: int = 4
    #: CPU threads torch may use for inference; 0 leaves torch's default (all cores).
    threads: int = 0
    #: Which registry entry each pipeline runs when a rule does not say
    #: (e.g. ``vertebral-bodies-ct: vertebral-bodies-ct-l`` for the 5-fold ensemble).
    pipeline_models: dict[str, str] = Field(default_factory=dict)
    #: Base URL of a local mirror holding the release files under their official names;
    #: empty means the official sources (Hugging Face, GitHub releases).
    mirror: str = ""
    #: Seconds a download may stall before it is retried (then reported unreachable).
    download_timeout: float = 30.0
    #: Options of the ``totalspineseg`` pipeline (``models.totalspineseg.step1_only``).
    totalspineseg: TotalSpineSegOptions = Field(default_factory=TotalSpineSegOptions)

    def pipeline_options(self, pipeline: str) -> dict[str, Any]:
        """Keyword options for the pipeline ``pipeline`` (empty for pipelines without any)."""
        section = getattr(self, pipeline.replace("-", "_"), None)
        return section.model_dump() if isinstance(section, TotalSpineSegOptions) else {}

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", value):
            raise ValueError("must be 'auto', 'cpu' or 'cuda:N'")
        return value

    @field_validator("keep_warm")
    @classmethod
    def _keep_warm(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (torch's default) or more")
        return value

    @field_validator("download_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str) -> str:
        if value and not re.match(r"https?://", value):
            raise ValueError("must be an http:// or https:// URL, or empty")
        return value

    @field_validator("pipeline_models")
    @classmethod
    def _pipeline_models(cls, value: dict[str, str]) -> dict[str, str]:
        from dicomnode.models.registry import REGISTRY  # no torch: the registry is plain data

        for pipeline, model in value.items():
            entry = REGISTRY.get(model)
            if entry is None:
                raise ValueError(f"{model!r} is not a known model (known: {', '.join(REGISTRY)})")
            if entry.pipeline != pipeline:
                raise ValueError(f"model {model} belongs to pipeline {entry.pipeline}, "
                                 f"not {pipeline}")
        return value


#: The pipelines (``dicomnode.models.pipelines`` implements one class for each name; the
#: model registry maps each to its model entries).
PipelineName = Literal["vertebral-bodies-ct", "totalspineseg", "spineps"]
PIPELINES: tuple[PipelineName, ...] = get_args(PipelineName)
Plane = Literal["axial", "sagittal", "coronal", "oblique"]


def _compile(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return pattern


class SliceRange(_Section):
    min: int = 1
    max: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SliceRange:
        if self.min < 1:
            raise ValueError("min must be at least 1")
        if self.max is not None and self.max < self.min:
            raise ValueError("max must not be below min")
        return self


class RuleMatch(_Section):
    """Conditions on a series; all given conditions must hold. Text compares case-insensitively.

    Regular expressions are searched (not anchored) in the attribute's value.
    """

    #: Modality (0008,0060), any of.
    modality: list[str] = Field(default_factory=list)
    #: Body Part Examined (0018,0015), regex.
    body_part: str | None = None
    #: Series Description (0008,103E), regex.
    series_description: str | None = None
    #: Protocol Name (0018,1030), regex.
    protocol_name: str | None = None
    #: Image Type (0008,0008) must hold every one of these values.
    image_type_contains: list[str] = Field(default_factory=list)
    #: Image Type must hold none of these values.
    image_type_excludes: list[str] = Field(default_factory=list)
    #: Acquisition plane from Image Orientation (Patient), any of.
    orientation: list[Plane] = Field(default_factory=list)
    #: Number of slices (instances, or frames of a multi-frame object).
    slices: SliceRange | None = None
    #: Calling AE Title of the association that sent the series, any of.
    calling_ae_title: list[str] = Field(default_factory=list)

    _regex = field_validator("body_part", "series_description", "protocol_name")(
        classmethod(lambda cls, v: _compile(v)))


class RuleConfig(_Section):
    """A routing rule: when ``match`` holds, run ``pipelines`` and send to ``destinations``."""

    name: str
    match: RuleMatch = Field(default_factory=RuleMatch)
    pipelines: list[str] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    #: Higher runs first when several series wait for the GPU.
    priority: int = 0
    #: Names under ``webhooks`` told when this rule's jobs are done, failed or dead.
    webhooks: list[str] = Field(default_factory=list)
    #: Destinations the source series itself is sent to (de-identified where the destination
    #: names a profile), through the dispatcher like results. A rule without pipelines only
    #: forwards, and may forward series that never form a volume (secondary captures...).
    forward: list[str] = Field(default_factory=list)
    #: ``received``: as soon as the series is complete and routed, whatever becomes of its
    #: job; ``done``: only once its job has results, together with them.
    forward_when: Literal["received", "done"] = "received"

    @field_validator("pipelines")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in PIPELINES:
                raise ValueError(f"unknown pipeline {value!r} (known: {', '.join(PIPELINES)})")
        return values


class RoutingConfig(_Section):
    #: ``first``: the first matching rule decides. ``all``: every matching rule runs.
    mode: Literal["first", "all"] = "first"
    rules: list[RuleConfig] = Field(default_factory=list)


class DestinationConfig(_Section):
    """Where results go: a DICOM peer (C-STORE SCU) or a DICOMweb server (STOW-RS)."""

    type: Literal["dicom", "dicomweb"] = "dicom"
    #: DICOM: the peer's AE title, host and port.
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    #: DICOM: our Calling AE Title towards this peer (default: node.ae_title).
    calling_ae_title: str | None = None
    tls: TLSConfig = Field(default_factory=TLSConfig)
    #: DICOMweb: base URL of the STOW-RS service (e.g. http://pacs/dicom-web).
    url: str | None = None
    username: str | None = None
    password: str | None = None
    #: A profile under ``deidentification.profiles`` (or the built-in ``basic``): everything
    #: sent here, forwarded series and results alike, is de-identified with it.
    deidentify: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> DestinationConfig:
        if self.type == "dicom":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"a dicom destination needs {', '.join(missing)}")
            _check_ae_title(self.ae_title or "")
            if not 1 <= (self.port or 0) <= 65535:
                raise ValueError("port must be between 1 and 65535")
        elif not self.url:
            raise ValueError("a dicomweb destination needs url")
        return self


class DeidProfileConfig(_Section):
    """A de-identification profile: DICOM PS3.15 Annex E, the Basic Application Level
    Confidentiality Profile, with the options of Table E.1-1 the site selects."""

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    clean_descriptors: bool = False
    #: Modalities whose pixels carry burned-in annotation at this site (e.g. US): withheld
    #: like BurnedInAnnotation YES and secondary captures.
    burned_in_modalities: list[str] = Field(default_factory=list)
    #: Forward objects whose pixels may show identifying text anyway (a site that checked).
    send_burned_in: bool = False

    def options(self) -> Options:
        return Options(
            retain_longitudinal_modified_dates=self.retain_longitudinal_modified_dates,
            retain_patient_characteristics=self.retain_patient_characteristics,
            retain_device_identity=self.retain_device_identity,
            retain_institution_identity=self.retain_institution_identity,
            clean_descriptors=self.clean_descriptors)


#: The profile every site has without declaring it: Annex E without options.
BASIC_PROFILE = "basic"


class DeidentificationConfig(_Section):
    """Keys and profiles of the de-identifying destinations (``destinations.<n>.deidentify``)."""

    #: The site key of pseudonyms and UID remapping (HMAC), read at start from this
    #: environment variable or file, never written in config.yaml. Changing it changes every
    #: pseudonym.
    key_env: str = ""
    key_file: Path | None = None
    #: Keep the map pseudonym → patient, study and series in the index for
    #: ``dicomnode deid lookup`` (operators only). Off: nothing can be re-identified here.
    store_mapping: bool = False
    profiles: dict[str, DeidProfileConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_key(self) -> DeidentificationConfig:
        if self.key_env and self.key_file is not None:
            raise ValueError("key_env and key_file exclude each other")
        return self

    def profile(self, name: str) -> DeidProfileConfig | None:
        if name in self.profiles:
            return self.profiles[name]
        return DeidProfileConfig() if name == BASIC_PROFILE else None

    def key(self) -> bytes:
        """The site key; raises ValueError when it is not configured or cannot be read."""
        key = read_secret(self.key_env, self.key_file)
        if key is None:
            raise ValueError("deidentification.key_env or key_file must name the site key")
        return key


class ReturnAddress(_Section):
    """Where a sender's DICOM listener is, for ``dispatch.return_to_sender``."""

    host: str
    port: int = Field(ge=1, le=65535)
    #: Our Calling AE Title towards it (default: node.ae_title).
    calling_ae_title: str | None = None
    tls: TLSConfig = Field(default_factory=TLSConfig)


class ResultsConfig(_Section):
    """What each job writes and sends (``dicomnode process`` writes the same)."""

    #: ``binary``: Segmentation Storage, one bit plane per segment (every viewer and PACS).
    #: ``labelmap``: Label Map Segmentation Storage (DICOM 2024c; OHIF 3.11+): one frame per
    #: slice holding every segment, much smaller; older viewers do not display it.
    seg_type: Literal["binary", "labelmap"] = "binary"
    #: Transfer syntax of a LABELMAP SEG: ``rle`` (RLE Lossless), ``jpegls`` (JPEG-LS
    #: Lossless) or ``none`` (Explicit VR Little Endian). BINARY SEGs are always uncompressed.
    labelmap_compression: Literal["rle", "jpegls", "none"] = "rle"
    #: Leave out SEG frames without any segment (smaller; some old viewers misplace SEGs with
    #: gaps between frames: switch it off for them).
    omit_empty_frames: bool = True
    #: Write the TID 1500 measurement report (volumes, intensities, spine measurements).
    sr: bool = True
    #: Write the preview secondary capture (and ``preview.png`` in the results folder).
    preview: bool = True
    #: Depth (mm) below the vertebral body surface left out of the trabecular (L1) attenuation.
    trabecular_erosion_mm: float = Field(default=3.0, ge=0)


class DispatchConfig(_Section):
    """Retries of deliveries; the wait doubles from ``initial_backoff`` up to ``max_backoff``."""

    max_attempts: int = Field(default=8, ge=1)
    initial_backoff: float = Field(default=10.0, gt=0)
    max_backoff: float = Field(default=900.0, gt=0)
    #: Seconds between C-ECHO health checks of DICOM destinations (0: off).
    echo_interval: float = Field(default=60.0, ge=0)
    #: Also send each job's results back to the AE that sent the series, looked up by its
    #: calling AE title in ``return_to`` (same retries as any destination). A sender that is
    #: not listed gets a delivery that fails at once with ``unknown-sender``.
    return_to_sender: bool = False
    #: Known senders: calling AE title → the address of its DICOM listener.
    return_to: dict[str, ReturnAddress] = Field(default_factory=dict)

    @field_validator("return_to")
    @classmethod
    def _return_aes(cls, value: dict[str, ReturnAddress]) -> dict[str, ReturnAddress]:
        return {_check_ae_title(ae): address for ae, address in value.items()}

    @model_validator(mode="after")
    def _senders_known(self) -> DispatchConfig:
        if self.return_to_sender and not self.return_to:
            raise ValueError("return_to_sender needs the senders' addresses under return_to")
        return self

    def sender_destination(self, ae_title: str) -> DestinationConfig | None:
        """The destination of a return to ``ae_title``, None when it is not in ``return_to``."""
        address = self.return_to.get(ae_title.strip())
        if address is None:
            return None
        return DestinationConfig(type="dicom", ae_title=ae_title.strip(), host=address.host,
                                 port=address.port, calling_ae_title=address.calling_ae_title,
                                 tls=address.tls)


class JobsConfig(_Section):
    """Who runs jobs: the local executor inside ``dicomnode serve`` (the default), or
    ``dicomnode worker`` processes on any machine through a Celery broker (``backend: celery``;
    README "More than one machine")."""

    #: False: receive and hold only. Complete series stay jobs in state ``complete`` (e.g. while
    #: weights are not installed yet); turning it on later processes them.
    enabled: bool = True
    #: Worker threads. Inference is serialised per device, so 2 lets one job load or encode
    #: while another is on the GPU.
    workers: int = Field(default=2, ge=1, le=32)
    #: Niceness of the threads that run jobs (and of torch's threads they start), in
    #: ``serve`` and in ``dicomnode worker``: receiving, at the default 0, gets the CPU first
    #: while a job computes. 0: the same priority.
    nice: int = Field(default=10, ge=0, le=19)
    #: Seconds between looks at the job table when nothing happens: a completed series and a
    #: routed job wake the executor at once.
    poll_interval: float = Field(default=0.5, gt=0, le=60)
    #: ``local``: serve's own threads run jobs (``workers`` of them). ``celery``: serve
    #: publishes job ids to ``broker_url`` and ``dicomnode worker`` processes run them.
    backend: Literal["local", "celery"] = "local"
    #: The Celery broker (RabbitMQ ``amqp://``; Redis ``redis://`` with a visibility timeout
    #: longer than the longest job). Only job ids travel through it.
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    #: Seconds a worker's claim on a job holds without a heartbeat (sent every third of it);
    #: after that the worker counts as lost and its job is queued again.
    lease_seconds: float = Field(default=60.0, ge=3, le=3600)
    #: Pipelines sent to the ``cpu`` queue (small jobs for CPU workers); all others go to
    #: ``gpu``.
    cpu_pipelines: list[PipelineName] = Field(default_factory=list)


class RetentionConfig(_Section):
    """When received instances and results are deleted. Nothing is deleted before delivery."""

    #: Hours after a job is done before its spool files and outputs are purged (0: never).
    keep_done_hours: float = Field(default=72.0, ge=0)
    #: When free disk falls below storage.min_free times this factor, purge the oldest done jobs.
    emergency_factor: float = Field(default=1.5, ge=1)


class WebTLSConfig(_Section):
    """HTTPS for the console and its API (PEM files; both or neither)."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> WebTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class WebConfig(_Section):
    """The operator console and its REST API, served inside ``dicomnode serve``."""

    enabled: bool = True
    #: Bound to a loopback address without users the console runs open (with a warning); on
    #: any other address ``serve`` refuses to start until ``users_file`` holds a user.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls: WebTLSConfig = Field(default_factory=WebTLSConfig)
    #: Base URL of the links the API returns (e.g. https://node.example.org behind a proxy);
    #: empty: http(s)://host:port.
    public_url: str = ""
    #: YAML file of users (name, bcrypt hash, role viewer or operator), written by
    #: ``dicomnode users add``; unset: no users.
    users_file: Path | None = None
    #: When set, GET /metrics needs ``Authorization: Bearer <token>``.
    metrics_token: str = ""
    #: Base URL of an OHIF viewer that shows the studies results go to (e.g. the local stack's
    #: http://127.0.0.1:3000): job pages link to <viewer_url>/viewer?StudyInstanceUIDs=<uid>.
    viewer_url: str = ""

    @field_validator("public_url", "viewer_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.match(r"https?://", value):
            raise ValueError("must be an http:// or https:// URL, or empty")
        return value.rstrip("/")

    @property
    def base_url(self) -> str:
        """Where the console is reached: ``public_url``, else http(s)://host:port."""
        if self.public_url:
            return self.public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls.enabled else 'http'}://{host}:{self.port}"


#: Job states a webhook can be told about (``webhooks[].events``).
WebhookEventName = Literal["done", "failed", "dead"]
WEBHOOK_EVENTS: tuple[WebhookEventName, ...] = get_args(WebhookEventName)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110 5.6.2)


class WebhookConfig(_Section):
    """An HTTP endpoint told, by a JSON POST, when a job is done, failed or dead."""

    name: str = Field(min_length=1, max_length=64)
    url: str
    events: list[WebhookEventName] = Field(default_factory=lambda: list(WEBHOOK_EVENTS))
    #: True: every job's events; false: only those of the rules that list it.
    all_jobs: bool = False
    #: Seconds each connect, send and read of a POST may take.
    timeout: float = Field(default=10.0, gt=0)
    #: Further attempts after a failed one; then the event is given up.
    retries: int = Field(default=5, ge=0)
    #: Seconds before the first retry, doubling up to ``max_backoff``.
    initial_backoff: float = Field(default=10.0, gt=0)
    max_backoff: float = Field(default=600.0, gt=0)
    #: The HMAC-SHA256 key of the ``X-Dicomnode-Signature`` header, read at start from this
    #: environment variable or file (never written in config.yaml); neither: unsigned.
    secret_env: str = ""
    secret_file: Path | None = None
    #: Extra request headers (e.g. ``Authorization: Bearer ${HOOK_TOKEN}``).
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"https?://[^/]", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[WebhookEventName]) -> list[WebhookEventName]:
        if not value:
            raise ValueError(f"name at least one of {', '.join(WEBHOOK_EVENTS)}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in ("content-type", "content-length", "host") \
                    or name.lower().startswith("x-dicomnode-"):
                raise ValueError(f"header {name} is set by the node")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if self.secret_env and self.secret_file is not None:
            raise ValueError("secret_env and secret_file exclude each other")
        return self

    def secret(self) -> bytes | None:
        """The signing key (None: unsigned); raises ValueError when it cannot be read."""
        return read_secret(self.secret_env, self.secret_file)


class Config(_Section):
    """The whole of ``config.yaml``."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    deidentification: DeidentificationConfig = Field(default_factory=DeidentificationConfig)

    @model_validator(mode="after")
    def _destinations_exist(self) -> Config:
        for index, rule in enumerate(self.routing.rules):
            for name in [*rule.destinations, *rule.forward]:
                if name not in self.destinations:
                    raise ValueError(f"routing.rules[{index}] ({rule.name}): destination "
                                     f"{name!r} is not defined under destinations")
        return self

    @model_validator(mode="after")
    def _profiles_exist(self) -> Config:
        deid = self.deidentification
        for name, destination in self.destinations.items():
            profile = destination.deidentify
            if profile is None:
                continue
            if deid.profile(profile) is None:
                raise ValueError(f"destinations.{name}.deidentify: profile {profile!r} is not "
                                 "defined under deidentification.profiles")
            if not deid.key_env and deid.key_file is None:
                raise ValueError(f"destinations.{name}.deidentify needs the site key: set "
                                 "deidentification.key_env or key_file")
        return self

    @model_validator(mode="after")
    def _webhooks_exist(self) -> Config:
        names = [hook.name for hook in self.webhooks]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"webhooks[{index}]: name {name!r} is used twice")
        named = set()
        for index, rule in enumerate(self.routing.rules):
            for name in rule.webhooks:
                if name not in names:
                    raise ValueError(f"routing.rules[{index}] ({rule.name}).webhooks: webhook "
                                     f"{name!r} is not defined under webhooks")
                named.add(name)
        for index, hook in enumerate(self.webhooks):
            if not hook.all_jobs and hook.name not in named:
                raise ValueError(f"webhooks[{index}] ({hook.name}): no rule lists it under "
                                 "webhooks and all_jobs is false, so it would never be called")
        return self

    def webhooks_for(self, rule: str | None) -> list[WebhookConfig]:
        """The webhooks a job of rule ``rule`` tells (None: a job no rule took yet)."""
        listed = {name for r in self.routing.rules if r.name == rule for name in r.webhooks}
        return [hook for hook in self.webhooks if hook.all_jobs or hook.name in listed]

    def resolve_paths(self, base: Path) -> Config:
        """Make relative paths relative to ``base`` (the folder of the config file)."""
        def absolute(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        self.storage.path = absolute(self.storage.path)
        self.models.path = absolute(self.models.path)
        if self.logging.file is not None:
            self.logging.file = absolute(self.logging.file)
        for hook in self.webhooks:
            if hook.secret_file is not None:
                hook.secret_file = absolute(hook.secret_file)
        if self.deidentification.key_file is not None:
            self.deidentification.key_file = absolute(self.deidentification.key_file)
        web = self.web
        if web.users_file is not None:
            web.users_file = absolute(web.users_file)
        if web.tls.cert_file is not None and web.tls.key_file is not None:
            web.tls.cert_file, web.tls.key_file = (absolute(web.tls.cert_file),
                                                   absolute(web.tls.key_file))
        return self


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"2 GB"`` → 2000000000; ``"500MiB"`` → 524288000; a bare number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (use e.g. 2 GB, 500 MiB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file, addressed by its dotted key path."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}" if self.key else self.reason


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, path: Path | None, problems: list[ConfigProblem]):
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(str(p) for p in problems))


def _substitute_env(value: Any, key: str, problems: list[ConfigProblem]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute_env(v, f"{key}.{k}" if key else str(k), problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(ConfigProblem(key, f"environment variable {name} is not set"))
            return ""
        return _ENV_PATTERN.sub(replace, value)
    return value


def _plain_reason(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message[:1].lower() + message[1:]


def parse_config(data: Any, path: Path | None = None) -> Config:
    """Validate a mapping as a configuration; raise :class:`ConfigError` with every problem."""
    problems: list[ConfigProblem] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [ConfigProblem("", "the file must hold a mapping of sections")])
    data = _substitute_env(data, "", problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                          for p in error["loc"]).lstrip(".")
            problems.append(ConfigProblem(key, _plain_reason(error)))
        raise ConfigError(path, problems) from None
    if problems:
        raise ConfigError(path, problems)
    return config.resolve_paths(path.parent if path else Path.cwd())


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate ``config.yaml`` (the default one when ``path`` is None).

    ``DICOMNODE_CONFIG`` names the file when ``path`` is not given.
    """
    if path is None:
        path = os.environ.get("DICOMNODE_CONFIG") or DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read the file: {exc.strerror}")
        raise ConfigError(path, [problem]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigProblem("", f"not valid YAML: {exc}")]) from None
    return parse_config(data, path.resolve())
