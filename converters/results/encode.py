"""The one call that turns a pipeline's label map(s) into the DICOM objects to send."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ..measurements.findings import Layer, measure
from ..measurements.geometry import Grid, frame_order, frame_planes
from ..preview import build_secondary_captures, render_panels, side_by_side
from ..seg.writer import build_segmentation, check_source_images, referenceable
from ..sr.writer import build_report
from ..vocabulary import LabelMapping
from .metadata import EncodeOptions, PipelineMetadata


def _source_datasets(source: Any) -> list[Dataset]:
    datasets = getattr(source, "datasets", source)
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    datasets = list(datasets)
    if not datasets:
        raise ValueError("no source images")
    return datasets


def _modality_values(datasets: Sequence[Dataset]) -> np.ndarray | None:
    """Stored pixels → modality values (HU on CT), or ``None`` if the sources carry no pixels."""
    if len(datasets) > 1 and all("PixelData" in ds for ds in datasets):
        return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets]).astype(np.float32)
    return None


def _values_from_volume(volume: Any, source: Any, order: Sequence[int]) -> np.ndarray:
    """``volume.image`` (a ``converters.Volume``) on the source frames ``order`` selects (the
    spatial order the measurements and reformats use), with ``source`` the SourceGrid.

    The volume's own dtype is kept (int16 HU on most CT): the measurements and the preview
    convert only what they sample, so no float copy of the whole volume is made, and when the
    volume's slices already are those frames in that order (the usual case) no copy at all.
    """
    import SimpleITK as sitk

    frames = getattr(source, "frames", None)
    if frames is None:
        raise ValueError("image given as a Volume needs the source as a SourceGrid (its .frames)")
    if getattr(volume, "grid", None) is not None:
        # Resampled (tilt / irregular spacing): let the loader put the values back on the
        # source planes by nearest neighbour, shifted into its unsigned integer range.
        from ..volume import to_source_grid

        values = sitk.GetArrayFromImage(volume.image).astype(np.float32)
        low = float(np.floor(values.min()))
        shifted = np.clip(np.rint(values - low), 0, 65535).astype(np.uint16)
        return (to_source_grid(volume, shifted).array.astype(np.float32) + low)[list(order)]
    values = sitk.GetArrayViewFromImage(volume.image)
    index = {src: k for k, src in enumerate(volume.sources)}
    slices = [index.get(frames[i]) for i in order]
    if slices == list(range(len(values))):
        return values
    out = np.zeros((len(slices), *values.shape[1:]), values.dtype)
    for j, k in enumerate(slices):
        if k is not None:
            out[j] = values[k]
    return out


def _frame_refs(datasets: Sequence[Dataset]) -> list[tuple[Dataset, int | None]]:
    """(dataset, frame number for multi-frame sources) of every source frame, in order."""
    refs: list[tuple[Dataset, int | None]] = []
    for ds in datasets:
        if "PerFrameFunctionalGroupsSequence" in ds:
            refs.extend((ds, n) for n in range(1, int(ds.NumberOfFrames) + 1))
        else:
            refs.append((ds, None))
    return refs


def encode_results(
    source: Any,
    labelmap: np.ndarray | Sequence[np.ndarray] | None,
    mapping: LabelMapping | Sequence[LabelMapping],
    pipeline: PipelineMetadata,
    options: EncodeOptions = EncodeOptions(),
    *,
    image: Any = None,
    png_path: str | os.PathLike[str] | None = None,
) -> list[Dataset]:
    """SEG series (one per label map), the measurement SR and the preview SC for one run.

    Args:
        source: the source images — a sequence of pydicom datasets ordered like the label
            map frames, or a source grid from ``converters.to_source_grid`` (``.datasets``,
            ``.array``).
        labelmap: (frames, Rows, Columns) label values on the source grid; several arrays
            when the pipeline produces overlapping structure sets (each becomes its own SEG
            series); ``None`` to take ``source.array``.
        mapping: the :class:`~converters.vocabulary.LabelMapping` of each label map.
        pipeline: algorithm identification (and the seed of every derived UID).
        options: see :class:`EncodeOptions`.
        image: modality values (HU on CT) for intensity measurements and the preview: an
            array on the label map's frames, or the ``converters.Volume`` the label map was
            computed on (with ``source`` a SourceGrid); by default decoded from the source
            datasets when they still hold Pixel Data.
        png_path: also write the preview as PNG here.

    Returns:
        The datasets to send: SEG(s), then SR, then the secondary captures. Empty when no
        mapped structure is present.
    """
    datasets = referenceable(_source_datasets(source))
    if labelmap is None:
        labelmap = source.array
    arrays = [labelmap] if isinstance(labelmap, np.ndarray) else list(labelmap)
    mappings = [mapping] if isinstance(mapping, LabelMapping) else list(mapping)
    if len(arrays) != len(mappings):
        raise ValueError(f"{len(arrays)} label maps but {len(mappings)} label mappings")
    if len({m.name for m in mappings}) != len(mappings):
        raise ValueError("label mappings of one run need distinct names (they name the SEG series)")

    layers: list[Layer] = []
    segs: list[tuple[str, Dataset, list]] = []
    for index, (array, lm) in enumerate(zip(arrays, mappings)):
        array = np.asarray(array)
        check_source_images(datasets, array)
        built = build_segmentation(datasets, array, lm, pipeline, options, layer_index=index)
        if built is None:
            continue
        seg, structures = built
        segs.append((lm.name, seg, structures))
        layers.append(Layer(lm, array, structures))
    if not segs:
        return []
    out: list[Dataset] = [seg for _, seg, _ in segs]
    if not (options.sr or options.preview):
        return out
    # Measurements and reformats need frames in spatial order; the SEG keeps source order.
    order = frame_order(datasets)
    planes = frame_planes(datasets)
    grid = Grid.from_planes([planes[i] for i in order], datasets[0])
    layers = [Layer(ly.mapping, ly.labelmap[order], ly.structures) for ly in layers]
    if image is None:
        image = _modality_values(datasets)
    if image is not None:
        volume = hasattr(image, "image")  # a Volume comes out in spatial order already
        image = _values_from_volume(image, source, order) if volume else np.asarray(image)
        if image.shape != arrays[0].shape:
            raise ValueError(f"image shape {image.shape} differs from the label map's {arrays[0].shape}")
        if not volume:
            image = image[order]
    modality = str(datasets[0].get("Modality", ""))
    if options.sr:
        findings = measure(layers, grid, image, modality, options.trabecular_erosion_mm)
        refs = _frame_refs(datasets)
        out.append(build_report(datasets, segs, findings, pipeline, [refs[i] for i in order]))
    if options.preview:
        # The label map with the most level structures carries the level names best.
        layer = max(layers, key=lambda ly: sum(s.level is not None for s in ly.structures))
        numbers = layer.mapping.to_segment_numbers(layer.labelmap, list(layer.structures))
        grey = image if image is not None else np.zeros(numbers.shape, np.float32)
        panels = render_panels(grid, grey, numbers, layer.structures, modality)
        out.extend(build_secondary_captures(datasets, panels, pipeline))
        if png_path is not None:
            side_by_side(panels).save(png_path, format="PNG")
    return out
