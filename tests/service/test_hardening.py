"""Receive hardening against a real ``dicomnode serve``: a vendor's DICOMDIR files sent with the
images, an inflation bomb, port probes holding association slots, a second node on the same
storage, a data set larger than ``storage.max_instance_size``."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.dcmtk import ECHOSCU
from tests.service.conftest import AE_TITLE, _cli, free_port

STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's script of the same name



def _dcmtk(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-v", "-aec", AE_TITLE, *args, "127.0.0.1", str(port)]
                          if tool == ECHOSCU else
                          [tool, "-v", "-aec", AE_TITLE, "127.0.0.1", str(port), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)


def _philips_like_study(folder: Path, ct: list[Dataset]) -> dict[str, Path]:
    """Three series (12 + 6 slices, a single-slice localizer), each folder with a per-series
    DICOMDIR named ``DIRFILE`` as Philips writes them: its file meta (0002,0003) is the UID
    of an image of the series and its image records carry (0008,0016)/(0008,0018), which is
    where storescu finds the SOP UIDs it sends the file under. Returns {SOP UID: file}."""
    study_uid, images = generate_uid(), {}
    for number, (count, description) in enumerate([(12, "AX 1mm"), (6, "AX 3mm"),
                                                   (1, "SURVEY")], start=1):
        series_folder = folder / f"SE{number:04d}"
        series_folder.mkdir(parents=True)
        series_uid, file_set = generate_uid(), FileSet()
        for i in range(count):
            ds = copy.deepcopy(ct[i % len(ct)])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, i + 1, description
            ds.PatientID, ds.StudyID = "PHILIPS-LIKE", "1"
            path = series_folder / f"IM_{i:04d}"
            ds.save_as(path, enforce_file_format=True)
            images[str(ds.SOPInstanceUID)] = path
            file_set.add(ds)
        staging = folder / f"fs{number}"
        file_set.write(staging)
        dicomdir = pydicom.dcmread(staging / "DICOMDIR")
        for record in dicomdir.DirectoryRecordSequence:
            if record.DirectoryRecordType == "IMAGE":
                record.SOPClassUID = record.ReferencedSOPClassUIDInFile
                record.SOPInstanceUID = record.ReferencedSOPInstanceUIDInFile
        first_image = next(u for u, p in images.items() if p.parent == series_folder)
        dicomdir.file_meta.MediaStorageSOPInstanceUID = first_image
        dicomdir.save_as(series_folder / "DIRFILE")
        for leftover in sorted(staging.rglob("*"), reverse=True):
            leftover.unlink() if leftover.is_file() else leftover.rmdir()
        staging.rmdir()
    return images


def test_per_series_dicomdir_files_never_displace_an_image(make_node: Any, tmp_path: Path,
                                                           ct_sources: list[Dataset]) -> None:
    """Observed: storescu +sd +r sent each DIRFILE as a CT under an image's UID, the node
    stored it, and then discarded the real image as a 'duplicate' (3 of 35 images lost, a
    whole localizer series gone)."""
    images = _philips_like_study(tmp_path / "study", ct_sources)
    node = make_node()
    sent = _dcmtk(STORESCU, node.port, "+sd", "+r", "-xv", str(tmp_path / "study"))
    assert sent.returncode == 0, sent.stdout

    held = {uid: path for uid, path in node.query("select sop_instance_uid, path from instances")}
    assert set(held) == set(images), "every image is held"
    for uid, relative in held.items():
        stored = pydicom.dcmread(node.spool / relative)
        assert stored.SOPInstanceUID == uid
        assert stored.PixelData == pydicom.dcmread(images[uid]).PixelData
    status = node.status()
    assert sorted(s["instances"] for s in status["series"]) == [1, 6, 12]
    directories = [r for r in status["rejections"]["recent"]
                   if r["kind"] == "media-storage-directory"]
    assert len(directories) == 3 and {r["status"] for r in directories} == {"0xB007"}
    assert all(r["sop_instance_uid"] in images and r["kept"] for r in directories)
    assert "Warning" in sent.stdout  # the sender was told, and went on with the images


def _deflate_bomb(path: Path, inflated: int) -> int:
    """A Deflated Explicit VR Little Endian file whose data set inflates to ``inflated`` bytes
    (a valid header, then a private OB element of zeros); returns the deflated size."""
    header = Dataset()
    header.SOPClassUID, header.SOPInstanceUID = CTImageStorage, generate_uid()
    header.StudyInstanceUID, header.SeriesInstanceUID = generate_uid(), generate_uid()
    header.Modality = "CT"
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, header)
    head = buffer.getvalue()
    zeros = inflated - len(head) - 12
    element = b"\x09\x00\x10\x10OB\x00\x00" + zeros.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [deflater.compress(head + element)]
    chunk = bytes(64 * 1024 * 1024)
    left = zeros
    while left:
        step = min(left, len(chunk))
        body.append(deflater.compress(chunk[:step]))
        left -= step
    body.append(deflater.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (CTImageStorage,
                                                                    header.SOPInstanceUID)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with open(path, "wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta)  # type: ignore[arg-type]
        for part in body:
            handle.write(part)
    return sum(len(p) for p in body)


def _peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _send_file(port: int, path: Path, syntax: str) -> int:
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else -1
    finally:
        if assoc.is_established:
            assoc.release()


def _good_instance(folder: Path, ct: list[Dataset]) -> Path:
    ds = copy.deepcopy(ct[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflate_bomb_is_refused_without_inflating_it(make_node: Any, tmp_path: Path,
                                                      ct_sources: list[Dataset],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Observed: 2 MB on the wire inflating to 2 GiB took the node from 718 MiB to 4.7 GiB
    resident before it answered 0x0000."""
    bomb = tmp_path / "bomb.dcm"
    wire = _deflate_bomb(bomb, 2 * 1024**3 + 1024**2)  # just over the default limit
    assert wire < 4 * 1024**2
    node = make_node()  # default storage.max_instance_size: 2 GiB
    assert node.process is not None
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    time.sleep(1)
    _peak_rss_reset(node.process.pid)
    before = _peak_rss(node.process.pid)
    assert _send_file(node.port, bomb, DeflatedExplicitVRLittleEndian) == 0xA703
    growth = _peak_rss(node.process.pid) - before
    assert growth < 32 * 1024**2, f"peak RSS grew by {growth / 1024**2:.0f} MiB"
    status = node.status()
    (refusal,) = status["rejections"]["recent"]
    assert refusal["kind"] == "instance-too-large" and refusal["status"] == "0xA703"
    assert status["instances"] == 0 and status["quarantine"]["files"] == 0
    good = _good_instance(tmp_path / "good", ct_sources)
    assert _send_file(node.port, good, JPEG2000Lossless) == 0
    print(f"deflate bomb: {wire} bytes on the wire, peak RSS growth {growth / 1024**2:.1f} MiB")


def test_data_set_over_max_instance_size_aborts_while_it_arrives(
        make_node: Any, tmp_path: Path, ct_sources: list[Dataset],
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node(storage={"max_instance_size": "8 MB"})
    big = copy.deepcopy(ct_sources[0])
    big.decompress()
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big.PixelData = bytes(40 * 1024 * 1024)
    big.Rows, big.Columns, big.NumberOfFrames = 2048, 2048, 5
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    assert node.process is not None
    _peak_rss_reset(node.process.pid)
    before = _peak_rss(node.process.pid)
    assert _send_file(node.port, path, ExplicitVRLittleEndian) == -1  # aborted, no response
    assert _peak_rss(node.process.pid) - before < 32 * 1024**2
    status = node.wait_for(lambda s: s["associations"]["by_outcome"].get("aborted"))
    assert [r["kind"] for r in status["rejections"]["recent"]] == ["instance-too-large"]
    assert [a["reason"] for a in status["associations"]["recent"]
            if a["outcome"] == "aborted"] == ["instance-too-large"]
    assert _send_file(node.port, _good_instance(tmp_path / "good", ct_sources),
                      JPEG2000Lossless) == 0


def test_bare_connections_do_not_hold_association_slots(make_node: Any, tmp_path: Path,
                                                        ct_sources: list[Dataset]) -> None:
    """Observed: opening and closing max_associations TCP connections (a port scan, a load
    balancer's health probe) locked real senders out for network_timeout (64 s)."""
    node = make_node(node={"max_associations": 4, "network_timeout": 60, "acse_timeout": 3})
    for _ in range(4):  # opened and closed at once
        socket.create_connection(("127.0.0.1", node.port)).close()
    probes = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(4)]  # held
    try:
        started = time.monotonic()
        assert _dcmtk(ECHOSCU, node.port).returncode == 0
        good = _good_instance(tmp_path / "good", ct_sources)
        sent = _dcmtk(STORESCU, node.port, "-xv", str(good))
        assert sent.returncode == 0 and "Success" in sent.stdout, sent.stdout
        assert time.monotonic() - started < 5
        # A probe that never sends an A-ASSOCIATE-RQ is closed after node.acse_timeout.
        probes[0].settimeout(10)
        started = time.monotonic()
        assert probes[0].recv(1) == b""
        assert time.monotonic() - started < 3 + 2
    finally:
        for probe in probes:
            probe.close()
    # The slots are real: max_associations concurrent associations, one more is refused.
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    held = [ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE) for _ in range(4)]
    try:
        assert all(a.is_established for a in held)
        refused = _dcmtk(ECHOSCU, node.port)
        assert refused.returncode != 0 and "Rejected" in refused.stdout
    finally:
        for assoc in held:
            assoc.release()
    status = node.wait_for(lambda s: s["associations"]["by_outcome"].get("released", 0) >= 6)
    assert "too-many-associations" in [a["reason"] for a in status["associations"]["recent"]]


def test_second_node_on_the_same_storage_exits_and_touches_nothing(make_node: Any) -> None:
    """Observed: a second serve ran start-up recovery against the live node's database (cut
    off its open associations, rewrote a row) before failing with 'Address already in use'."""
    node = make_node()
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert held.is_established
    try:
        # the row is written as the association is accepted, moments after the A-ASSOCIATE-AC
        deadline = time.monotonic() + 10
        while ("open",) not in node.query("select outcome from associations"):
            assert time.monotonic() < deadline, node.query("select * from associations")
            time.sleep(0.05)
        before = node.query("select * from associations order by id")
        config = dict(node.config, node={**node.config["node"], "port": free_port()})
        second = node.root / "second.yaml"
        second.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        result = subprocess.run([*_cli(), "serve", "--config", str(second)], cwd=node.root,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "another dicomnode" in result.stderr and "storage.path" in result.stderr
        assert time.monotonic() - started < 30
        assert node.query("select * from associations order by id") == before
        assert held.is_established and held.send_c_echo().Status == 0
    finally:
        held.release()
    assert node.stop() == 0


def test_an_exception_in_the_handler_is_a_typed_recorded_refusal(
        tmp_path: Path, ct_sources: list[Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    """No path through the C-STORE handler ends in pynetdicom's bare 0xC211: a bug becomes
    ``internal-error`` (0xA7FF) with the traceback logged, the bytes kept and a row written.
    In-process, so that a fault can be injected into a real receiver on a real association."""
    from dicomnode.config import NodeConfig, StorageConfig
    from dicomnode.receiver import Receiver
    from dicomnode.storage import Spool
    from dicomnode.store import InstanceIndex, create_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}", immediate=True)
    create_schema(engine)
    index, spool = InstanceIndex(engine), Spool(tmp_path / "spool")
    spool.prepare()
    port = free_port()
    receiver = Receiver(NodeConfig(host="127.0.0.1", port=port), StorageConfig(min_free=0),
                        index, spool, lambda outcome: None)
    receiver.start()
    try:
        def broken(uid: str) -> None:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(index, "find_instance", broken)
        good = _good_instance(tmp_path / "in", ct_sources)
        assert _send_file(port, good, JPEG2000Lossless) == 0xA7FF
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "select kind, status, message, quarantine_path from rejections").all()
        assert [(kind, status) for kind, status, _, _ in rows] == [("internal-error", 0xA7FF)]
        assert "injected fault" in rows[0][2]
        kept = spool.root / rows[0][3]
        assert pydicom.dcmread(kept, force=True).SOPInstanceUID == pydicom.dcmread(
            good).SOPInstanceUID
        monkeypatch.undo()
        assert _send_file(port, good, JPEG2000Lossless) == 0  # the node goes on
    finally:
        receiver.stop()
        engine.dispose()


def test_quarantine_keeps_within_its_size_and_age(tmp_path: Path) -> None:
    from dicomnode.storage.spool import QuarantineLimits, Spool

    spool = Spool(tmp_path / "spool", quarantine_limits=QuarantineLimits(1000, 3600))
    spool.prepare()
    kept = [spool.keep_rejected([bytes([i]) * 300]) for i in range(5)]
    assert all(kept)
    held = sorted(p.name for p in spool.quarantine.iterdir())
    assert len(held) == 3 and spool.quarantine_usage() == (3, 900)  # the oldest two went
    assert {f"{k}".split("/")[1] for k in kept[2:]} == set(held)
    assert spool.keep_rejected([b"x" * 1001]) is None  # larger than the whole quarantine
    old = spool.quarantine / held[0]
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    restarted = Spool(tmp_path / "spool", quarantine_limits=QuarantineLimits(1000, 3600))
    restarted.prepare()  # expired files go at start-up (and before each new one is kept)
    assert not old.exists() and restarted.quarantine_usage() == (2, 600)


def test_readme_example_study_is_received(make_node: Any, tmp_path: Path) -> None:
    """The README's first study, step by step: the shared example CT as its archive wrote it
    (empty SOP Class, SOP Instance, Study and Series UIDs in the data sets), the README's
    dcmodify line (SOP Class filled, new SOP Instance UIDs), dcmtk's storescu. The node
    derives the study and series UIDs."""
    from tests.service.conftest import EXAMPLE_CT

    folder = tmp_path / "ex"
    folder.mkdir()
    for path in sorted(EXAMPLE_CT.iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    files = sorted(str(p) for p in folder.iterdir())
    subprocess.run(["/usr/bin/dcmodify", "-nb", "-i", "(0008,0016)=1.2.840.10008.5.1.4.1.1.2",
                    "-gin", *files], check=True, capture_output=True)
    node = make_node()
    sent = _dcmtk(STORESCU, node.port, "-xv", "+sd", str(folder))
    assert sent.returncode == 0 and sent.stdout.count("Received Store Response (Success)") == 20
    status = node.status()
    assert [(s["instances"], s["uid_synthesized"]) for s in status["series"]] == [(20, True)]
    assert status["rejections"]["total"] == 0
