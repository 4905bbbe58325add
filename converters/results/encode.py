"""The one call that turns a pipeline's label map(s) into the DICOM objects to send."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ..instance import frame_numbers
from ..measurements.findings import Layer, measure
from ..measurements.geometry import Grid, frame_order, frame_planes
from ..preview import build_secondary_captures, render_panels, side_by_side
from ..seg.writer import build_segmentation, check_source_images, referenceable
from ..sr.writer import build_report
from ..vocabulary import LabelMapping, Structure
from .metadata import EncodeOptions, PipelineMetadata

if TYPE_CHECKING:
    # converters.volume loads SimpleITK: imported where a SourceGrid or Volume is handled
    # (a caller holding one has loaded it already), never for datasets and arrays.
    from ..volume import SourceGrid, Volume


def _source_datasets(source: SourceGrid | Sequence[Dataset]) -> tuple[list[Dataset],
                                                                      SourceGrid | None]:
    """The source datasets, and the SourceGrid when ``source`` is one."""
    grid: SourceGrid | None = None
    if isinstance(source, Sequence):
        datasets = list(source)
        if not all(isinstance(ds, Dataset) for ds in datasets):
            raise TypeError("source: a sequence of pydicom Datasets or a converters.SourceGrid")
    else:
        from ..volume import SourceGrid

        if not isinstance(source, SourceGrid):
            raise TypeError(f"source: a sequence of pydicom Datasets or a converters.SourceGrid, "
                            f"not {type(source).__name__}")
        grid = source
        datasets = list(source.datasets)
    if not datasets:
        raise ValueError("no source images")
    return datasets, grid


def _modality_values(datasets: Sequence[Dataset]) -> np.ndarray | None:
    """Stored pixels → modality values (HU on CT), or ``None`` if the sources carry no pixels."""
    if len(datasets) > 1 and all("PixelData" in ds for ds in datasets):
        values = [apply_modality_lut(ds.pixel_array, ds) for ds in datasets]
        return np.stack(values).astype(np.float32)
    return None


def _values_from_volume(volume: Volume, grid: SourceGrid,
                        order: Sequence[int] | np.ndarray) -> np.ndarray:
    """``volume.image`` on the source frames ``order`` selects (the spatial order the
    measurements and reformats use) of the SourceGrid ``grid``.

    The volume's own dtype is kept (int16 HU on most CT): the measurements and the preview
    convert only what they sample, so no float copy of the whole volume is made, and when the
    volume's slices already are those frames in that order (the usual case) no copy at all.
    """
    import SimpleITK as sitk

    from ..volume import to_source_grid

    if volume.grid is not None:
        # Resampled (tilt / irregular spacing): let the loader put the values back on the
        # source planes by nearest neighbour, shifted into its unsigned integer range.
        values = sitk.GetArrayFromImage(volume.image).astype(np.float32)
        low = float(np.floor(values.min()))
        shifted = np.clip(np.rint(values - low), 0, 65535).astype(np.uint16)
        on_frames = to_source_grid(volume, shifted).array.astype(np.float32) + low
        return on_frames[list(order)]
    view = sitk.GetArrayViewFromImage(volume.image)
    index = {src: k for k, src in enumerate(volume.sources)}
    slices = [index.get(grid.frames[i]) for i in order]
    if slices == list(range(len(view))):
        return view
    out = np.zeros((len(slices), *view.shape[1:]), view.dtype)
    for j, k in enumerate(slices):
        if k is not None:
            out[j] = view[k]
    return out


def _image_values(image: Volume | np.ndarray | None, datasets: Sequence[Dataset],
                  grid: SourceGrid | None, order: np.ndarray, shape: tuple[int, ...]
                  ) -> np.ndarray | None:
    """Modality values on the label map's frames (``shape``), in the spatial order
    ``order``; None when there are none."""
    if image is None:
        values = _modality_values(datasets)
        if values is None:
            return None
    elif isinstance(image, np.ndarray):
        values = image
    else:
        from ..volume import Volume

        if not isinstance(image, Volume):
            raise TypeError(f"image: a numpy array or a converters.Volume, not "
                            f"{type(image).__name__}")
        if grid is None:
            raise ValueError("image given as a Volume needs the source as a SourceGrid")
        values = _values_from_volume(image, grid, order)  # in spatial order already
        order = np.arange(len(order))
    if values.shape != shape:
        raise ValueError(f"image shape {values.shape} differs from the label map's {shape}")
    return values if np.array_equal(order, np.arange(len(order))) else values[order]


def _frame_refs(datasets: Sequence[Dataset]) -> list[tuple[Dataset, int | None]]:
    """(dataset, Referenced Frame Number or None) of every source frame, in order: the
    numbering of converters.instance, which the source grid and the SEG use too."""
    return [(ds, number) for ds in datasets for number in frame_numbers(ds)]


def encode_results(
    source: SourceGrid | Sequence[Dataset],
    labelmap: np.ndarray | Sequence[np.ndarray] | None,
    mapping: LabelMapping | Sequence[LabelMapping],
    pipeline: PipelineMetadata,
    options: EncodeOptions = EncodeOptions(),
    *,
    image: Volume | np.ndarray | None = None,
    png_path: str | os.PathLike[str] | None = None,
    parallel: bool = True,
) -> list[Dataset]:
    """SEG series (one per label map), the measurement SR and the preview SC for one run.

    Args:
        source: the source images — a sequence of pydicom datasets ordered like the label
            map frames, or the :class:`~converters.SourceGrid` from
            ``converters.to_source_grid`` (its ``.datasets``, and ``.array`` as the label
            map when ``labelmap`` is None). Anything else raises TypeError.
        labelmap: (frames, Rows, Columns) label values on the source grid; several arrays
            when the pipeline produces overlapping structure sets (each becomes its own SEG
            series); ``None`` to take ``source.array``.
        mapping: the :class:`~converters.vocabulary.LabelMapping` of each label map.
        pipeline: algorithm identification (and the seed of every derived UID).
        options: see :class:`EncodeOptions`.
        image: modality values (HU on CT) for intensity measurements and the preview: a
            numpy array on the label map's frames (source order), or the
            :class:`~converters.Volume` the label map was computed on (``source`` must then
            be its SourceGrid); None: decoded from the source datasets when they still hold
            Pixel Data. Anything else raises TypeError.
        png_path: also write the preview as PNG here.
        parallel: render the preview on a second thread while the SR is built (the same
            objects either way; False for callers that want one thread only).

    Returns:
        The datasets to send: SEG(s), then SR, then the secondary captures. Empty when no
        mapped structure is present.
    """
    given, source_grid = _source_datasets(source)
    datasets = referenceable(given)
    if labelmap is None:
        if source_grid is None:
            raise ValueError("labelmap None takes the label map of a SourceGrid; the source "
                             "is a sequence of datasets")
        labelmap = source_grid.array
    arrays = [labelmap] if isinstance(labelmap, np.ndarray) else list(labelmap)
    mappings = [mapping] if isinstance(mapping, LabelMapping) else list(mapping)
    if len(arrays) != len(mappings):
        raise ValueError(f"{len(arrays)} label maps but {len(mappings)} label mappings")
    if len({m.name for m in mappings}) != len(mappings):
        raise ValueError("label mappings of one run need distinct names (they name the SEG series)")

    layers: list[Layer] = []
    segs: list[tuple[str, hd.seg.Segmentation, list[Structure]]] = []
    for index, (given_array, lm) in enumerate(zip(arrays, mappings, strict=True)):
        array = np.asarray(given_array)
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
    values = _image_values(image, datasets, source_grid, order, layers[0].labelmap.shape)
    modality = str(datasets[0].get("Modality", ""))

    def report() -> Dataset:
        findings = measure(layers, grid, values, modality, options.trabecular_erosion_mm)
        refs = _frame_refs(datasets)
        return build_report(datasets, segs, findings, pipeline, [refs[i] for i in order])

    def previews() -> Sequence[Dataset]:
        # The label map with the most level structures carries the level names best.
        layer = max(layers, key=lambda ly: sum(s.level is not None for s in ly.structures))
        numbers = layer.mapping.to_segment_numbers(layer.labelmap, list(layer.structures))
        grey = values if values is not None else np.zeros(numbers.shape, np.float32)
        panels = render_panels(grid, grey, numbers, layer.structures, modality)
        if png_path is not None:
            side_by_side(panels).save(png_path, format="PNG")
        return build_secondary_captures(datasets, panels, pipeline)

    if options.sr and options.preview and parallel:
        # The report is pure Python (highdicom), the preview mostly numpy, SciPy and Pillow,
        # which release the GIL: the preview renders on a second thread meanwhile. Neither
        # writes to what they share (the sources, label maps and values), so the objects
        # are those a serial run builds.
        with ThreadPoolExecutor(1, thread_name_prefix="encode-preview") as pool:
            rendering = pool.submit(previews)
            out.append(report())
            out.extend(rendering.result())
        return out
    if options.sr:
        out.append(report())
    if options.preview:
        out.extend(previews())
    return out
