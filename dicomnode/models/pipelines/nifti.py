"""In-memory NIfTI views of a volume, for the official packages that work on nibabel images.

TotalSpineSeg's and SPINEPS's model-specific steps take ``nibabel`` images (SPINEPS through
TPTBox's ``NII`` wrapper). The node's volume is a SimpleITK image in LPS; these helpers give the
official functions exactly what they would read from a NIfTI file of that volume, and bring their
results back onto the volume's grid, without touching the disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.models.pipelines.base import labelmap_like

if TYPE_CHECKING:
    import nibabel as nib
    import SimpleITK as sitk

#: ITK's LPS world → NIfTI's RAS world.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_of(image: sitk.Image) -> np.ndarray:
    """The RAS voxel → world affine of a 3D SimpleITK image (what ITK writes into a NIfTI)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


def to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """The volume as a NIfTI image in its own voxel order and pixel type, passed through a
    serialise/parse round trip so its header (float32 affine, zooms) is what a file would give."""
    import nibabel as nib
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) → NIfTI (i, j, k)
    nii = nib.Nifti1Image(np.ascontiguousarray(data), affine_of(image))
    nii.set_data_dtype(data.dtype)
    return file_handoff(nii)


def file_handoff(nii: nib.Nifti1Image) -> nib.Nifti1Image:
    """What ``nib.load(nib.save(nii))`` returns, in memory.

    The official tools hand images from step to step through ``.nii.gz`` files; saving stores the
    affine in float32 and the data in the header's dtype. Serialising to bytes and parsing them
    back reproduces that exactly (gzip only changes the bytes on disk, not what is read back).
    """
    import nibabel as nib

    return nib.Nifti1Image.from_bytes(nii.to_bytes())


def labelmap_on(nii: nib.Nifti1Image, image: sitk.Image) -> sitk.Image:
    """A NIfTI label map on the volume's voxel grid (same voxel order) as a SimpleITK image."""
    data = np.asanyarray(nii.dataobj)
    return labelmap_like(data.transpose(2, 1, 0), image)


def itk_written(data: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """``data`` on the grid of ``like`` as nnU-Net's SimpleITKIO writes it and nibabel reads it
    back.

    nnU-Net reads its input with SimpleITK and writes the prediction with the geometry ITK read;
    ITK derives the direction from the NIfTI quaternion and stores its own float32 ``srow``, which
    can differ from nibabel's by one float32 ulp. That ulp matters: TotalSpineSeg's final
    nearest-neighbour resampling of oblique images can land exactly half-way between voxels. So
    the header comes from a real ITK write/read of a one-voxel image with ``like``'s header (the
    voxel count does not enter the geometry); the label data never leave memory.
    """
    import nibabel as nib
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(dir=_RAM_DISK if os.path.isdir(_RAM_DISK) else None) as tmp:
        header = like.header.copy()
        header.set_data_shape((1, 1, 1))
        header.set_data_dtype(np.uint8)
        source, written = Path(tmp) / "in.nii", Path(tmp) / "out.nii"
        nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), like.affine, header), source)
        read = sitk.ReadImage(str(source))
        seg = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        seg.SetSpacing(read.GetSpacing())
        seg.SetOrigin(read.GetOrigin())
        seg.SetDirection(read.GetDirection())
        sitk.WriteImage(seg, str(written))
        itk = nib.load(written)
        assert isinstance(itk, nib.Nifti1Image)  # a .nii file (Nifti2Image is a subclass)
        affine, header = itk.affine, itk.header.copy()
    dtype = np.uint8 if data.max(initial=0) < 255 else np.uint16  # SimpleITKIO.write_seg
    header.set_data_shape(data.shape)
    header.set_data_dtype(dtype)
    return file_handoff(nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), affine, header))


_RAM_DISK = "/dev/shm"
