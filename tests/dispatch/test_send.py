"""Delivery to a real Orthanc over loopback: C-STORE, STOW-RS, C-ECHO, and each failure kind."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.config import DestinationConfig
from dicomnode.dispatcher import DeliveryError, deliver, echo
from tests.orthanc import ORTHANC, Orthanc, free_port
from tests.shared_data import EXAMPLE_CT_DICOM

pytestmark = pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian 'orthanc') not installed")

CT_DIR = EXAMPLE_CT_DICOM


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


def _datasets(count: int) -> list[pydicom.Dataset]:
    """``count`` CT slices of the shared series with fresh UIDs (a new study each call)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for path in sorted(CT_DIR.iterdir())[:count]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # empty in this real series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out


def _dicom(orthanc: Orthanc, **changes) -> DestinationConfig:
    settings = {"type": "dicom", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                "port": orthanc.dicom_port, **changes}
    return DestinationConfig(**settings)


def test_c_store_delivers_every_object_in_one_association(orthanc: Orthanc) -> None:
    datasets = _datasets(5)
    report = deliver("pacs", _dicom(orthanc), datasets, calling_ae_title="DICOMNODE")
    assert report.stored == [ds.SOPInstanceUID for ds in datasets]
    assert set(report.stored) <= set(orthanc.sop_instance_uids())


def test_stow_rs_delivers_to_dicomweb(orthanc: Orthanc) -> None:
    datasets = _datasets(3)
    destination = DestinationConfig(type="dicomweb", url=orthanc.dicomweb_url)
    report = deliver("web", destination, datasets, calling_ae_title="DICOMNODE")
    assert len(report.stored) == 3
    assert set(report.stored) <= set(orthanc.sop_instance_uids())


def test_down_destination_is_unreachable_not_lost() -> None:
    destination = DestinationConfig(type="dicom", ae_title="NOBODY", host="127.0.0.1",
                                    port=free_port())
    with pytest.raises(DeliveryError) as error:
        deliver("pacs", destination, _datasets(1), calling_ae_title="DICOMNODE")
    assert error.value.reason == "unreachable"
    assert echo(destination, calling_ae_title="DICOMNODE") == (False, "unreachable")
    web = DestinationConfig(type="dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(DeliveryError) as error:
        deliver("web", web, _datasets(1), calling_ae_title="DICOMNODE")
    assert error.value.reason == "unreachable"


def test_wrong_called_ae_title_is_rejected(orthanc: Orthanc) -> None:
    destination = _dicom(orthanc, ae_title="NOT_ORTHANC")
    with pytest.raises(DeliveryError) as error:
        deliver("pacs", destination, _datasets(1), calling_ae_title="DICOMNODE")
    assert error.value.reason == "rejected"
    assert echo(destination, calling_ae_title="DICOMNODE")[0] is False


def test_echo_reports_healthy_destination(orthanc: Orthanc) -> None:
    assert echo(_dicom(orthanc), calling_ae_title="DICOMNODE") == (True, "C-ECHO ok")


def test_a_peer_that_drops_the_request_is_asked_twice_then_unreachable() -> None:
    """A connection closed right after the A-ASSOCIATE-RQ (how a rejection can reach
    pynetdicom on a loaded machine) is asked once more before it counts as unreachable."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    connections: list[int] = []

    def drop_every_request() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections.append(1)
            conn.recv(65536)  # the A-ASSOCIATE-RQ
            conn.close()

    threading.Thread(target=drop_every_request, daemon=True).start()
    destination = DestinationConfig(type="dicom", ae_title="PEER", host="127.0.0.1", port=port)
    try:
        with pytest.raises(DeliveryError) as error:
            deliver("pacs", destination, _datasets(1), calling_ae_title="DICOMNODE")
    finally:
        server.close()
    assert error.value.reason == "unreachable"
    assert "aborted" in str(error.value)
    assert len(connections) == 2
