"""Where the shared test images are: ``../shared/data`` beside the repository (CI's layout),
else ``/work/shared/data`` (a clone made elsewhere on a development machine)."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():
    SHARED_DATA = Path("/work/shared/data")

EXAMPLE_CT_DICOM = SHARED_DATA / "totalsegmentator-ref" / "example_ct_dicom"
