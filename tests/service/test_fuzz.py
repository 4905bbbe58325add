"""Seeded mutation fuzzing of the C-STORE receiver against a real ``dicomnode serve``.

Mutants of good seed data sets (:mod:`tests.service.fuzz`) are sent byte for byte with
pynetdicom. The node must stay up, answer every one with success or one of its typed refusal
statuses (never an unhandled-error status), record a rejection for each refusal, and every
instance it acknowledges must read back cleanly with pydicom and with dcmtk's dcmdump.

Reproduce: ``DICOMNODE_FUZZ_SEEDS=1,2,3`` (fuzz seeds), ``DICOMNODE_FUZZ_COUNT=700`` (mutants
per seed), ``DICOMNODE_FUZZ_TIME=150`` (seconds of sending at most), or
``DICOMNODE_FUZZ_MUTANTS=2:417,3:12`` (only these seed:index mutants). A failing run writes
each failing mutant's Part-10 file and ``failures.txt`` into ``fuzz-failures/`` in the test's
tmp folder, or into ``DICOMNODE_FUZZ_OUT`` when set (pytest deletes old tmp folders);
``python -m tests.service.fuzz SEED INDEX out.dcm`` rebuilds one mutant.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.receiver.errors import STATUS
from tests.service.conftest import AE_TITLE, RunningNode, example_ct
from tests.service.fuzz import (
    Mutant,
    Seed,
    build_seeds,
    check_dcmdump,
    check_pydicom,
    make_mutant,
    mutant_file,
    mutant_uid,
    part10,
    quiet_pydicom,
)

#: Statuses that mean the node failed to handle a C-STORE (pynetdicom's "handler raised" and
#: "handler returned an invalid status", and the node's own internal-error status).
UNHANDLED = {0xC210: "pynetdicom: handler returned an invalid status",
             0xC211: "pynetdicom: the C-STORE handler raised",
             0xA7FF: "node: internal error"}
TYPED_STATUSES = frozenset(STATUS.values())
#: C-STOREs per association before the sender reconnects.
PER_ASSOCIATION = 100


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[Seed, ...]:
    return tuple(build_seeds(example_ct()))


def _plan() -> list[tuple[int, int]]:
    """(fuzz seed, mutant index) pairs to send, seeds interleaved."""
    only = os.environ.get("DICOMNODE_FUZZ_MUTANTS", "").strip()
    if only:
        return [(int(s), int(i)) for s, i in (p.split(":") for p in only.split(","))]
    fuzz_seeds = [int(s) for s in os.environ.get("DICOMNODE_FUZZ_SEEDS", "1,2,3").split(",")]
    count = int(os.environ.get("DICOMNODE_FUZZ_COUNT", "700"))
    return [(seed, index) for index in range(count) for seed in fuzz_seeds]


class Sender:
    """One pynetdicom SCU sending Part-10 files byte for byte, reconnecting as needed."""

    def __init__(self, port: int, folder: Path):
        self.port = port
        self.path = folder / "mutant.dcm"
        self.ae = AE(ae_title="FUZZSCU")
        for sop_class, syntax in sorted({(s.sop_class_uid, s.transfer_syntax_uid)
                                         for s in seeds()}):
            self.ae.add_requested_context(sop_class, syntax)
        self.ae.add_requested_context(Verification)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.assoc: Association | None = None
        self.on_association = 0
        self.associations = 0
        self.aborts = 0

    def _association(self) -> Association:
        if (self.assoc is None or not self.assoc.is_established
                or self.on_association >= PER_ASSOCIATION):
            self.close()
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title=AE_TITLE)
            if not self.assoc.is_established:
                raise AssertionError("the node refused an association")
            self.associations += 1
            self.on_association = 0
        return self.assoc

    def send(self, sop_class: str, uid: str, syntax: str, data: bytes) -> int | None:
        """The C-STORE response status, or None when the association ended without one."""
        self.path.write_bytes(part10(sop_class, uid, syntax, data))
        assoc = self._association()
        self.on_association += 1
        try:
            status = assoc.send_c_store(self.path).get("Status")
        except (RuntimeError, ValueError):
            status = None
        if status is None or not assoc.is_established:
            self.aborts += 1
            self.assoc = None
        return None if status is None else int(status)

    def echo(self) -> int | None:
        status = self._association().send_c_echo().get("Status")
        return None if status is None else int(status)

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


@pytest.fixture
def chunked_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom reads only the file meta and sends the rest of the file as it is."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)


def _spool_paths(node: RunningNode) -> dict[str, Path]:
    return {uid: node.spool / path
            for uid, path in node.query("select sop_instance_uid, path from instances")}


def _check_accepted(node: RunningNode, accepted: list[tuple[str, str]]
                    ) -> dict[str, list[str]]:
    """{SOP Instance UID: complaints} for acknowledged instances that do not read back.

    dcmdump runs in worker threads; pydicom in this one (``warnings`` is not thread-safe).
    """
    paths = _spool_paths(node)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    present = []
    for uid, sop_class in accepted:
        if uid not in paths:
            problems[uid].append("acknowledged with 0x0000 but not in the index")
        elif not paths[uid].is_file():
            problems[uid].append(f"indexed, but its spool file {paths[uid]} is missing")
        else:
            present.append((uid, sop_class))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        dumps = pool.map(lambda item: (item[0], check_dcmdump(paths[item[0]])), present)
        with quiet_pydicom():
            for uid, sop_class in present:
                if reason := check_pydicom(paths[uid], uid, sop_class):
                    problems[uid].append(reason)
        for uid, reason in dumps:
            if reason:
                problems[uid].append(reason)
    return dict(problems)


def test_fuzz_seeds_are_accepted_and_read_back(make_node: Any, tmp_path: Path,
                                               chunked_sending: None) -> None:
    """The harness itself: every unmutated seed is accepted, stored as sent and passes both
    checkers; mutants are reproducible."""
    node = make_node()
    sender = Sender(node.port, tmp_path)
    sent = []
    for number, seed in enumerate(seeds()):
        uid = mutant_uid(2, 0, number)
        data = seed.encoded(uid)
        assert sender.send(seed.sop_class_uid, uid, seed.transfer_syntax_uid, data) == 0, \
            seed.name
        sent.append((uid, seed.sop_class_uid, data, seed.name))
    assert sender.echo() == 0
    sender.close()
    assert _check_accepted(node, [(uid, cls) for uid, cls, _, _ in sent]) == {}
    paths = _spool_paths(node)
    for uid, _, data, name in sent:
        assert paths[uid].read_bytes().endswith(data), f"{name} not stored as sent"
    assert node.query("select count(*) from rejections") == [(0,)]
    assert {s.name for s in seeds()} >= {"ct-native-explicit", "ct-native-implicit",
                                         "ct-jpeg2000", "sr-nested", "ct-native-deflated"}
    assert make_mutant(list(seeds()), 7, 3) == make_mutant(list(seeds()), 7, 3)
    assert make_mutant(list(seeds()), 7, 3).data != make_mutant(list(seeds()), 7, 4).data

    # Neither checker is vacuous: a stray Item tag after the first element fails both.
    seed = seeds()[0]
    uid = mutant_uid(2, 1, 0)
    data = seed.with_uid(uid)
    cut = seed.elements[0].end
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(part10(seed.sop_class_uid, uid, seed.transfer_syntax_uid,
                              data[:cut] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + data[cut:]))
    with quiet_pydicom():
        assert check_pydicom(broken, uid, seed.sop_class_uid)
    assert check_dcmdump(broken)


@pytest.mark.slow
def test_mutation_fuzz_c_store_receiver(make_node: Any, tmp_path: Path,
                                        chunked_sending: None) -> None:
    node = make_node()
    plan = _plan()
    time_limit = float(os.environ.get("DICOMNODE_FUZZ_TIME", "150"))
    templates = list(seeds())
    sender = Sender(node.port, tmp_path)
    mutants: dict[str, Mutant] = {}
    statuses: collections.Counter[str] = collections.Counter()
    accepted: list[tuple[str, str]] = []
    failures: list[tuple[Mutant | None, str]] = []
    refused = 0
    per_seed: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])  # sent, ok, bad
    started = time.monotonic()
    for seed, index in plan:
        if time.monotonic() - started > time_limit:
            break
        mutant = make_mutant(templates, seed, index)
        mutants[mutant.sop_instance_uid] = mutant
        per_seed[mutant.seed_name][0] += 1
        try:
            status = sender.send(mutant.sop_class_uid, mutant.sop_instance_uid,
                                 mutant.transfer_syntax_uid, mutant.data)
        except AssertionError as exc:  # no association any more
            failures.append((mutant, f"cannot send: {exc}"))
            break
        if status is None:
            statuses["no response (association ended)"] += 1
            if node.process is not None and node.process.poll() is not None:
                failures.append((mutant, "the node process exited"))
                break
            continue
        statuses[f"0x{status:04X}"] += 1
        if status == 0x0000:
            accepted.append((mutant.sop_instance_uid, mutant.sop_class_uid))
            per_seed[mutant.seed_name][1] += 1
            continue
        refused += 1
        if status in UNHANDLED:
            failures.append((mutant, f"status 0x{status:04X} ({UNHANDLED[status]})"))
        elif status not in TYPED_STATUSES:
            failures.append((mutant, f"status 0x{status:04X} is none of the typed refusals"))
    sending_s = time.monotonic() - started
    sent = sum(statuses.values())

    alive = node.process is not None and node.process.poll() is None
    if not alive:
        failures.append((None, "the node process is not running after the fuzz"))
    else:
        for uid, reasons in _check_accepted(node, accepted).items():
            failures.extend((mutants[uid], reason) for reason in reasons)
        rejections = node.query("select count(*) from rejections")[0][0]
        if rejections < refused:
            failures.append((None, f"{refused} refusal statuses, {rejections} rejection rows"))
        try:  # still serving: C-ECHO, then a good seed
            if (echo := sender.echo()) != 0:
                failures.append((None, f"C-ECHO after the fuzz answered {echo}"))
            good = templates[0]
            uid = mutant_uid(3, 0, 0)
            status = sender.send(good.sop_class_uid, uid, good.transfer_syntax_uid,
                                 good.encoded(uid))
            if status != 0:
                failures.append((None, f"a good seed after the fuzz answered {status}"))
            elif problems := _check_accepted(node, [(uid, good.sop_class_uid)]):
                failures.append((None, f"a good seed after the fuzz: {problems}"))
        except AssertionError as exc:
            failures.append((None, f"after the fuzz: {exc}"))
        sender.close()

    by_kind = (node.query("select kind, status, count(*) from rejections group by kind, "
                          "status order by 3 desc") if alive else [])
    failing = {m.sop_instance_uid: m for m, _ in failures if m is not None}
    for mutant in failing.values():
        per_seed[mutant.seed_name][2] += 1
    accepted_uids = {uid for uid, _ in accepted}
    by_checker = collections.Counter(
        checker for checker, _ in {(_checker(reason), m.sop_instance_uid)
                                   for m, reason in failures if m is not None})
    summary = (f"fuzz: sent {sent} of {len(plan)} planned in {sending_s:.0f} s over "
               f"{sender.associations} associations; accepted {len(accepted)} "
               f"({len(accepted_uids & failing.keys())} of them fail a check), refused "
               f"{refused}, association aborts {sender.aborts}; statuses "
               f"{dict(statuses.most_common())}; failing mutants by checker "
               f"{dict(by_checker.most_common())}; rejections by kind "
               + ", ".join(f"{kind} 0x{status:04X}: {n}" for kind, status, n in by_kind)
               + "; by seed (sent/accepted/failing) "
               + ", ".join(f"{name} {n[0]}/{n[1]}/{n[2]}" for name, n in sorted(per_seed.items())))
    if sent < len(plan):
        summary += f"; time limit {time_limit:.0f} s reached, {len(plan) - sent} not sent"
    print(summary)
    out = Path(os.environ.get("DICOMNODE_FUZZ_OUT") or tmp_path / "fuzz-failures")
    report = _write_failures(out, failures, summary)
    assert not failures, report


def _checker(reason: str) -> str:
    """Which check a failure reason comes from: status, pydicom, dcmdump, index."""
    for name in ("status", "pydicom", "dcmdump"):
        if reason.startswith(name):
            return name
    return "index" if "index" in reason or "spool file" in reason else "node"


def _write_failures(folder: Path, failures: list[tuple[Mutant | None, str]],
                    summary: str) -> str:
    """Save each failing mutant's file and a failures.txt; return the report text."""
    if not failures:
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    lines = [summary, f"{len(failures)} failure(s); failing mutants saved in {folder}"]
    for mutant, reason in failures:
        if mutant is None:
            lines.append(f"NODE: {reason}")
            continue
        name = f"seed{mutant.seed}-mutant{mutant.index:05d}.dcm"
        (folder / name).write_bytes(mutant_file(mutant))
        lines.append(f"{mutant.describe()} [{name}]\n    -> {reason}")
    report = "\n".join(lines)
    (folder / "failures.txt").write_text(report + "\n")
    return report if len(report) < 20000 else report[:20000] + "\n... (see failures.txt)"
