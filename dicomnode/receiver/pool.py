"""Receiver processes: ``node.receiver_processes`` C-STORE SCPs accepting on one port.

In one process every association shares one GIL with the others and with the jobs, the timers
and the console: four senders get one core between them, and a running job slows them all.
So the node binds and listens once (a busy port stops ``serve`` at once, with its reason) and
starts that many receiver processes (``spawn``: fresh interpreters, not forks of a process
that runs threads). Each accepts from the shared socket, whichever is free first (the kernel
does not hash connections to processes), and is a whole :class:`Receiver` with a database
engine of its own: it answers 0x0000 only after its own commit, as one process did.

Shared with the node: the slots of ``node.max_associations``, in shared memory
(:class:`SharedSlots`), and a pipe per process on which it says that it listens (or why it
cannot) and reports each series that started receiving. The node's assembler arms that
series' timer and answers; as in one process, the first instance of a series is acknowledged
only once its timer is in the database (after ``ARM_TIMEOUT`` without an answer it is
acknowledged anyway: the assembler's sweep arms what is missing).

The processes die with the node (``PR_SET_PDEATHSIG``: after a ``kill -9`` of ``serve`` they
must not hold the port), ignore SIGINT (a Ctrl-C reaches the whole process group; the node
stops them itself) and stop gracefully on SIGTERM. One that dies otherwise is logged and
started again.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from dicomnode.config import Config, NodeConfig, StorageConfig
from dicomnode.logs import configure_logging, log_event
from dicomnode.receiver.errors import ReceiverError
from dicomnode.receiver.scp import STOP_GRACE, Receiver, SeriesStarted, cannot_listen, tls_context
from dicomnode.receiver.slots import SharedSlots
from dicomnode.storage import QuarantineLimits, Spool, StorageLayout
from dicomnode.store import IndexOutcome, InstanceIndex, make_engine

LOGGER = logging.getLogger("dicomnode.receiver")

#: Seconds a receiver process may take to import, connect to the database and listen.
START_TIMEOUT = 120.0
#: Seconds between the node's checks that its receiver processes live.
MONITOR_INTERVAL = 0.5
#: Least seconds between two starts of the same receiver process (one that dies at once
#: must not spin).
RESTART_INTERVAL = 5.0
#: Seconds, beyond the receivers' own grace, that a stop waits before killing one.
STOP_MARGIN = 5.0
#: Seconds between a receiver process's checks that the node still runs (where
#: PR_SET_PDEATHSIG is not available).
PARENT_CHECK = 0.5
#: Connections the kernel queues on the port while every receiver is busy accepting.
BACKLOG = 128
#: Seconds a receiver process waits for the node to arm a new series' timer.
ARM_TIMEOUT = 10.0
#: prctl(2) option: the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def open_spool(storage: StorageConfig) -> Spool:
    """The spool as the node and each receiver process open it."""
    layout = StorageLayout.of(storage)
    return Spool(layout.spool, fsync=storage.fsync, quarantine_limits=QuarantineLimits(
        storage.quarantine_max, storage.quarantine_days * 86400))


def listen(node: NodeConfig) -> socket.socket:
    """Bind and listen on ``node.host:node.port`` (SO_REUSEADDR, as pynetdicom binds)."""
    family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
    try:
        return socket.create_server((node.host, node.port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise cannot_listen(node, exc) from exc


@dataclass
class _Child:
    number: int
    process: BaseProcess
    #: The node's end of the process's pipe; None once the process closed it (it ended).
    events: Connection | None
    started: float = field(default_factory=time.monotonic)
    listening: bool = False


class ReceiverPool:
    """The node's receiver processes: start, supervise, stop."""

    def __init__(self, config: Config, on_series_started: SeriesStarted):
        self.config = config
        self.node = config.node
        self.on_series_started = on_series_started
        self.count = config.node.receiver_process_count()
        self._context = multiprocessing.get_context("spawn")
        self._counts = self._context.RawArray(ctypes.c_int, self.count)
        self._children: dict[int, _Child] = {}
        self._listening: socket.socket | None = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen, start the processes and return once each accepts associations."""
        tls_context(self.node)  # an unreadable certificate or key stops serve here
        self._listening = listen(self.node)
        self._stopping.clear()
        try:
            for number in range(self.count):
                self._spawn(number)
            for child in self._children.values():
                self._await_listening(child)
        except BaseException:
            self._stop_children(grace=0.0)
            self._close_socket()
            raise
        self._monitor = threading.Thread(target=self._supervise, name="receiver-pool",
                                         daemon=True)
        self._monitor.start()
        log_event(LOGGER, "receiver.processes", processes=self.count,
                  pids=[c.process.pid for c in self._children.values()])

    def busy(self) -> bool:
        """Whether any receiver process holds an association."""
        return SharedSlots.in_use(self._counts) > 0

    def pids(self) -> list[int]:
        """The receiver processes' ids (for tests and operators)."""
        return [c.process.pid for c in self._children.values() if c.process.pid is not None]

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every process gracefully (open associations get ``grace`` seconds, as one
        receiver's :meth:`Receiver.stop`) and return once none runs: all that was
        acknowledged is indexed."""
        if self._listening is None:
            return
        self._stopping.set()  # the supervisor restarts nothing from now on
        self._stop_children(grace)
        if self._monitor is not None:
            # It started the processes it restarted: they were sent its PR_SET_PDEATHSIG when
            # it ends, so it ends only now.
            self._monitor.join()
            self._monitor = None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._listening is not None:
            self._listening.close()
            self._listening = None

    def _spawn(self, number: int) -> None:
        events, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve_receiver, name=f"dicomnode-receiver-{number}", daemon=True,
            args=(self.config, number, os.getpid(), self._listening, self._counts, theirs))
        process.start()
        theirs.close()  # the child holds that end: EOF here once it is gone
        self._children[number] = _Child(number, process, events)

    def _await_listening(self, child: _Child) -> None:
        assert child.events is not None
        if not child.events.poll(START_TIMEOUT):
            raise ReceiverError(f"receiver process {child.number} did not start within "
                                f"{START_TIMEOUT:.0f} s")
        try:
            kind, payload = child.events.recv()
        except (EOFError, OSError):
            child.process.join(1.0)
            raise ReceiverError(f"receiver process {child.number} ended with "
                                f"{child.process.exitcode} before it listened") from None
        if kind != "listening":
            raise ReceiverError(str(payload))
        child.listening = True

    def _stop_children(self, grace: float) -> None:
        for child in self._children.values():
            if child.process.is_alive():
                child.process.terminate()  # SIGTERM: the receiver's graceful stop
        deadline = time.monotonic() + grace + STOP_MARGIN
        for child in self._children.values():
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log_event(LOGGER, "receiver.process_killed", logging.WARNING,
                          process=child.number, pid=child.process.pid)
                child.process.kill()
                child.process.join(STOP_MARGIN)
            if child.events is not None:
                child.events.close()
                child.events = None

    # -- supervision -------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            readable = {c.events: c for c in self._children.values() if c.events is not None}
            for connection in wait(list(readable), timeout=MONITOR_INTERVAL):
                assert isinstance(connection, Connection)
                self._receive(readable[connection])
            for child in list(self._children.values()):
                if not self._stopping.is_set() and not child.process.is_alive():
                    self._replace(child)

    def _receive(self, child: _Child) -> None:
        assert child.events is not None
        try:
            kind, payload = child.events.recv()
        except (EOFError, OSError):
            child.events.close()
            child.events = None
            return
        if kind == "series":
            armed = True
            try:
                self.on_series_started(payload)
            except Exception:  # noqa: BLE001 - the assembler's sweep arms it later
                LOGGER.exception("cannot arm the timer of a series that started receiving")
                armed = False
            try:
                child.events.send(("armed", armed))
            except OSError:
                pass  # the process is gone
        elif kind == "listening":
            child.listening = True
            log_event(LOGGER, "receiver.process_restarted", process=child.number,
                      pid=child.process.pid)
        elif kind == "failed":
            log_event(LOGGER, "receiver.process_failed", logging.ERROR, process=child.number,
                      reason=str(payload))

    def _replace(self, child: _Child) -> None:
        """A process ended without being told to: free its slots and start another (not
        more often than every RESTART_INTERVAL seconds)."""
        if child.events is not None:  # read what it said before it ended
            while child.events is not None and child.events.poll():
                self._receive(child)
        if time.monotonic() - child.started < RESTART_INTERVAL:
            return
        code = child.process.exitcode
        SharedSlots.clear(self._counts, child.number)
        log_event(LOGGER, "receiver.process_exited", logging.ERROR, process=child.number,
                  pid=child.process.pid, exit_code=code,
                  reason=(f"killed by signal {-code}" if code is not None and code < 0
                          else f"exit code {code}"))
        self._spawn(child.number)


def _die_with_node() -> None:
    """Ask the kernel for SIGKILL once the node is gone (Linux; elsewhere PARENT_CHECK)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def serve_receiver(config: Config, number: int, node_pid: int, listening: socket.socket,
                   counts: ctypes.Array[ctypes.c_int], events: Connection) -> None:
    """A receiver process's main: serve associations on ``listening`` until SIGTERM."""
    _die_with_node()
    if os.getppid() != node_pid:  # the node ended before the kernel was asked
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    configure_logging(config.logging)
    exchange = threading.Lock()  # one message (and its answer) at a time on the pipe

    def send(kind: str, payload: object) -> None:
        with exchange:
            try:
                events.send((kind, payload))
            except OSError:  # the node is going; never fail a C-STORE for it
                pass

    def series_started(outcome: IndexOutcome) -> None:
        with exchange:
            try:
                events.send(("series", outcome))
                if events.poll(ARM_TIMEOUT):
                    events.recv()  # ("armed", bool)
                else:
                    log_event(LOGGER, "receiver.arm_timeout", logging.WARNING,
                              series_instance_uid=outcome.series_instance_uid)
            except (OSError, EOFError):  # the node is going; never fail a C-STORE for it
                pass

    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url, immediate=True)
    receiver = Receiver(config.node, config.storage, InstanceIndex(engine),
                        open_spool(config.storage), series_started,
                        SharedSlots(counts, number, config.node.max_associations))
    try:
        receiver.start(listening)
    except ReceiverError as exc:
        send("failed", str(exc))
        return
    send("listening", os.getpid())
    while not stop.wait(PARENT_CHECK):
        if os.getppid() != node_pid:
            os._exit(1)
    receiver.stop()
    engine.dispose()
