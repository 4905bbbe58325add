"""The Prometheus collector: every metric computed at scrape time from the index and the machine.

Nothing is counted in memory: the index is the record (it survives restarts, and any number of
processes may serve ``/metrics`` from it), so a scrape after N instances were stored says N,
whichever process answers. :func:`registry` builds a fresh
:class:`~prometheus_client.CollectorRegistry` holding one :class:`NodeCollector`;
prometheus_client's global default registry is never touched.

Counters are derived from rows that only grow (see :mod:`dicomnode.metrics.index`), with the
exceptions a person causes: ``dicomnode jobs retry`` takes a job out of ``failed``, ``dead`` or
``cancelled`` (``dicomnode_jobs_total`` falls for that state) and sends its deliveries again
(their states and attempt counts start over), and a retried job's stage durations are replaced
by the new run's. Prometheus reads such a fall as a counter reset.

There is no bytes-received counter: the index keeps the size of each instance it holds, not of
those retention purged, so ``dicomnode_instances_held_bytes`` is a gauge. A scrape that cannot
read the index fails (the web server answers 500, Prometheus records ``up`` 0) rather than
leave out counters, which would look like resets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine

from dicomnode.config import Config
from dicomnode.metrics.host import gpu_memory, installed_models, storage_free_bytes
from dicomnode.metrics.index import IndexSnapshot, read_index
from dicomnode.receiver.errors import RejectKind
from dicomnode.storage import StorageLayout
from dicomnode.store import RUNNING_STATES, WAITING_STATES, DeliveryState, JobState, SeriesState

#: Job states that are still on their way (the queue), in flow order; also the stages whose
#: durations are histogrammed (a stage's duration is known once the job has left it).
QUEUE_STATES: tuple[str, ...] = tuple(
    s.value for s in (*WAITING_STATES, *RUNNING_STATES, JobState.DISPATCHING))
#: Job states a job ends in (until a person retries a failed, dead or cancelled one).
END_STATES: tuple[str, ...] = tuple(s.value for s in JobState if s.value not in QUEUE_STATES)
#: The stage that runs the model.
INFERENCE_STAGE = JobState.SEGMENTING.value

#: Refusals of a presentation context at negotiation: no instance was sent.
CONTEXT_REFUSALS = frozenset({RejectKind.UNSUPPORTED_SOP_CLASS.value,
                              RejectKind.UNSUPPORTED_TRANSFER_SYNTAX.value})
INSTANCE_OUTCOMES = ("stored", "duplicate", "conflict", "refused")

#: Upper bounds (seconds) of the stage histograms' buckets: milliseconds (routing) to an hour.
STAGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                    120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Upper bounds (seconds) of the inference histogram: a small CT on a GPU to a large MR on CPU.
INFERENCE_BUCKETS: tuple[float, ...] = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0,
                                        180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Spec:
    """One metric family: its type, full name (counters end in ``_total``), labels, HELP."""

    kind: str  # counter | gauge | histogram
    name: str
    labels: tuple[str, ...]
    help: str

    def family(self) -> Metric:
        return FAMILY_TYPES[self.kind](self.name, self.help, labels=list(self.labels))


FAMILY_TYPES: dict[str, type[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]] = {
    "counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily}


SPECS: tuple[Spec, ...] = (
    Spec("counter", "dicomnode_instances_received_total", ("outcome",),
         "C-STORE requests answered, by outcome: stored (a new instance indexed), duplicate "
         "(a resend of a held instance, acknowledged, first copy kept), conflict (another "
         "object under a held SOP Instance UID: refused, kept aside), refused (every other "
         "refusal; by reason in dicomnode_refusals_total)."),
    Spec("counter", "dicomnode_instances_received_bytes_total", (),
         "Bytes of the instances stored (spool file sizes; duplicates and refusals add "
         "nothing)."),
    Spec("counter", "dicomnode_refusals_total", ("kind",),
         "Refusals recorded in the index, by typed reason (rejections.kind): refused C-STORE "
         "requests (uid-conflict included) and presentation contexts refused at negotiation "
         "(unsupported-sop-class, unsupported-transfer-syntax)."),
    Spec("gauge", "dicomnode_instances_held", (),
         "Instances held in the spool and the index now (retention removes purged series)."),
    Spec("gauge", "dicomnode_instances_held_bytes", (),
         "Bytes of the instances held in the spool (file sizes as indexed)."),
    Spec("counter", "dicomnode_associations_total", ("outcome", "reason"),
         "DICOM associations that ended, by outcome (released, aborted, rejected) and reason "
         "(released-by-peer, aborted-by-peer, calling-ae-not-allowed, tls-handshake-failed...)."),
    Spec("gauge", "dicomnode_associations_open", (),
         "DICOM associations open now, as audited in the index."),
    Spec("counter", "dicomnode_jobs_total", ("state", "pipeline"),
         "Jobs in an end state, by state (done, failed, dead, cancelled, ignored, superseded) "
         "and pipeline (empty for jobs no rule routed). A retry takes a job out of failed, "
         "dead or cancelled."),
    Spec("gauge", "dicomnode_jobs_queued", ("state", "pipeline"),
         "Jobs on their way, by state (complete, routed, loading, segmenting, encoding, "
         "dispatching) and pipeline (empty until routed): the queue depth."),
    Spec("counter", "dicomnode_deliveries_total", ("destination", "state"),
         "Deliveries of job results (one per job and destination) that finished, by "
         "destination and state (delivered, dead). A job's re-run or retry sends its "
         "deliveries again."),
    Spec("gauge", "dicomnode_deliveries_pending", ("destination",),
         "Deliveries waiting for their next attempt, by destination."),
    Spec("counter", "dicomnode_delivery_failed_attempts_total", ("destination",),
         "Delivery attempts that failed, by destination (attempts made, less the successful "
         "ones). A job's re-run or retry restarts its deliveries' attempt counts."),
    Spec("gauge", "dicomnode_series", ("state",),
         "Series in the index, by assembly state (receiving, complete)."),
    Spec("gauge", "dicomnode_storage_free_bytes", (),
         "Free bytes on the file system holding the spool (storage.path)."),
    Spec("gauge", "dicomnode_storage_reserve_bytes", (),
         "storage.min_free: with less free space than this, C-STORE is refused with 0xA700 "
         "(disk-below-reserve)."),
    Spec("gauge", "dicomnode_destination_reachable", ("destination",),
         "1 when the destination's last C-ECHO succeeded, else 0 (DICOM destinations)."),
    Spec("gauge", "dicomnode_destination_last_check_timestamp_seconds", ("destination",),
         "Unix time of the destination's last C-ECHO."),
    Spec("gauge", "dicomnode_model_installed", ("model", "pipeline"),
         "1 when a complete copy of the registry model is installed under models.path, else 0."),
    Spec("gauge", "dicomnode_model_warm", ("model", "pipeline"),
         "1 when the installed model is loaded in the runtime of the process serving /metrics "
         "(serve's own job workers: its next job starts without loading it), else 0."),
    Spec("gauge", "dicomnode_gpu_memory_used_bytes", ("device",),
         "GPU memory in use on the CUDA device, all processes."),
    Spec("gauge", "dicomnode_gpu_memory_total_bytes", ("device",),
         "GPU memory of the CUDA device."),
    Spec("gauge", "dicomnode_gpu_memory_allocated_bytes", ("device",),
         "GPU memory held by tensors of the process serving /metrics (torch's allocator; the "
         "models' memory where that is the node itself)."),
    Spec("gauge", "dicomnode_gpu_memory_reserved_bytes", ("device",),
         "GPU memory reserved by torch's caching allocator in the process serving /metrics."),
    Spec("histogram", "dicomnode_job_stage_duration_seconds", ("pipeline", "stage"),
         "Seconds jobs spent in each stage (complete: waiting for routing, routed: waiting for a "
         "worker, loading, segmenting, encoding, dispatching), by pipeline; a job counts once it "
         "has left the stage."),
    Spec("histogram", "dicomnode_inference_duration_seconds", ("pipeline",),
         "Seconds of model inference per job (its segmenting stage), by pipeline."),
)


class Buckets:
    """Fixed-bucket histogram of a list of durations, as the exposition wants it."""

    def __init__(self, bounds: tuple[float, ...], values: Iterable[float] = ()):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        for value in values:
            self.counts[bisect.bisect_left(bounds, value)] += 1
            self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))
        return out


class Families:
    """One scrape's families (every one of :data:`SPECS`, in order), samples added by name."""

    def __init__(self) -> None:
        self.by_name = {spec.name: spec.family() for spec in SPECS}

    def add(self, name: str, value: float, *labels: str) -> None:
        """A sample on a counter or gauge."""
        family = self.by_name[name]
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily), name
        family.add_metric(list(labels), value)

    def histogram(self, name: str, bounds: tuple[float, ...], values: Iterable[float],
                  *labels: str) -> None:
        family = self.by_name[name]
        assert isinstance(family, HistogramMetricFamily), name
        counted = Buckets(bounds, values)
        family.add_metric(list(labels), counted.cumulative(), counted.total)


class NodeCollector:
    """A custom collector (``collect``/``describe``) over one index, storage and configuration.

    ``engine`` should be a plain reading engine (``dicomnode.store.make_engine(url)``): an
    ``immediate=True`` one makes every SQLite transaction, this one's too, take the write lock.
    """

    def __init__(self, engine: Engine, layout: StorageLayout, config: Config,
                 warm: Callable[[], list[Path]] | None = None):
        self.engine = engine
        self.layout = layout
        self.config = config
        #: The model folders loaded in the serving process (``CaseRunner.warm_folders``);
        #: None where nothing runs models (every model then reads 0).
        self.warm = warm

    def describe(self) -> list[Metric]:
        """The families without samples (lets ``CollectorRegistry`` check names, and
        ``restricted_registry`` pick families), without touching the index."""
        return [spec.family() for spec in SPECS]

    def collect(self) -> Iterator[Metric]:
        snap = read_index(self.engine, QUEUE_STATES)
        out = Families()
        self._instances(out, snap)
        self._associations(out, snap)
        self._jobs(out, snap)
        self._deliveries(out, snap)
        self._host(out)
        yield from out.by_name.values()

    # -- receiving ---------------------------------------------------------------------------

    @staticmethod
    def _instances(out: Families, snap: IndexSnapshot) -> None:
        conflicts = snap.rejections.get(RejectKind.UID_CONFLICT.value, 0)
        refused = sum(n for kind, n in snap.rejections.items()
                      if kind not in CONTEXT_REFUSALS) - conflicts
        received = {"stored": sum(stored for _, stored in snap.series.values()),
                    "duplicate": snap.duplicates, "conflict": conflicts, "refused": refused}
        for outcome in INSTANCE_OUTCOMES:
            out.add("dicomnode_instances_received_total", received[outcome], outcome)
        out.add("dicomnode_instances_received_bytes_total", snap.bytes_received)
        kinds = {**{kind.value: 0 for kind in RejectKind}, **snap.rejections}
        for kind in sorted(kinds):
            out.add("dicomnode_refusals_total", kinds[kind], kind)
        out.add("dicomnode_instances_held", snap.instances_held)
        out.add("dicomnode_instances_held_bytes", snap.bytes_held)
        for state in (SeriesState.RECEIVING.value, SeriesState.COMPLETE.value,
                      *sorted(set(snap.series) - {s.value for s in SeriesState})):
            out.add("dicomnode_series", snap.series.get(state, (0, 0))[0], state)

    @staticmethod
    def _associations(out: Families, snap: IndexSnapshot) -> None:
        open_now = 0
        for (outcome, reason), count in sorted(snap.associations.items()):
            if outcome == "open":
                open_now += count
            else:
                out.add("dicomnode_associations_total", count, outcome, reason)
        out.add("dicomnode_associations_open", open_now)

    # -- jobs --------------------------------------------------------------------------------

    def _pipelines(self, snap: IndexSnapshot) -> list[str]:
        """Configured pipelines (shown at 0 before their first job) and those jobs name."""
        configured = {p for rule in self.config.routing.rules for p in rule.pipelines}
        return sorted(configured | {pipeline for _, pipeline in snap.jobs})

    def _jobs(self, out: Families, snap: IndexSnapshot) -> None:
        pipelines = self._pipelines(snap)
        states = {state for state, _ in snap.jobs}
        ended = [*END_STATES, *sorted(states - set(END_STATES) - set(QUEUE_STATES))]
        for pipeline in pipelines:
            for state in ended:
                out.add("dicomnode_jobs_total", snap.jobs.get((state, pipeline), 0),
                        state, pipeline)
            for state in QUEUE_STATES:
                out.add("dicomnode_jobs_queued", snap.jobs.get((state, pipeline), 0),
                        state, pipeline)
        for pipeline in (p for p in pipelines if p):  # routed jobs only: they have one
            for stage in QUEUE_STATES:
                out.histogram("dicomnode_job_stage_duration_seconds", STAGE_BUCKETS,
                              snap.stage_seconds.get((pipeline, stage), []), pipeline, stage)
            out.histogram("dicomnode_inference_duration_seconds", INFERENCE_BUCKETS,
                          snap.stage_seconds.get((pipeline, INFERENCE_STAGE), []), pipeline)

    def _deliveries(self, out: Families, snap: IndexSnapshot) -> None:
        destinations = sorted(set(self.config.destinations)
                              | {destination for destination, _ in snap.deliveries})
        for destination in destinations:
            by_state = {state: snap.deliveries.get((destination, state), (0, 0))
                        for state in (s.value for s in DeliveryState)}
            for state in (DeliveryState.DELIVERED.value, DeliveryState.DEAD.value):
                out.add("dicomnode_deliveries_total", by_state[state][0], destination, state)
            out.add("dicomnode_deliveries_pending", by_state[DeliveryState.PENDING.value][0],
                    destination)
            attempts = sum(made for _, made in by_state.values())
            delivered = by_state[DeliveryState.DELIVERED.value][0]  # each succeeded once
            out.add("dicomnode_delivery_failed_attempts_total", max(attempts - delivered, 0),
                    destination)
        for check in snap.destinations:
            out.add("dicomnode_destination_reachable", 1 if check.reachable else 0,
                    check.destination)
            out.add("dicomnode_destination_last_check_timestamp_seconds",
                    check.checked_at.timestamp(), check.destination)

    # -- the machine -------------------------------------------------------------------------

    def _host(self, out: Families) -> None:
        free = storage_free_bytes(self.layout)
        if free is not None:
            out.add("dicomnode_storage_free_bytes", free)
        out.add("dicomnode_storage_reserve_bytes", self.config.storage.min_free)
        for model in installed_models(self.config.models.path,
                                      self.warm() if self.warm is not None else ()):
            out.add("dicomnode_model_installed", 1 if model.installed else 0,
                    model.name, model.pipeline)
            out.add("dicomnode_model_warm", 1 if model.warm else 0, model.name, model.pipeline)
        for gpu in gpu_memory(self.config.models.device):
            out.add("dicomnode_gpu_memory_allocated_bytes", gpu.allocated, gpu.device)
            out.add("dicomnode_gpu_memory_reserved_bytes", gpu.reserved, gpu.device)
            if gpu.used is not None:
                out.add("dicomnode_gpu_memory_used_bytes", gpu.used, gpu.device)
            if gpu.total is not None:
                out.add("dicomnode_gpu_memory_total_bytes", gpu.total, gpu.device)


def registry(engine: Engine, layout: StorageLayout, config: Config,
             warm: Callable[[], list[Path]] | None = None) -> CollectorRegistry:
    """A new registry whose one collector computes every ``dicomnode_*`` metric when scraped
    (``prometheus_client.generate_latest(registry(...))``); no state outside it."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(engine, layout, config, warm))
    return reg
