"""``dicomnode process``: the node's case runner over a folder of DICOM files or NIfTI files.

DICOM files are grouped with :func:`dicomnode.grouping.group_files`, exactly as the receiver
groups what it is sent (same series, same derived UIDs); each series that can form a volume is
a case, each NIfTI file another. Series that are not volumes (SR, secondary captures…) are
reported as skipped with the reason the node would give, not as failures. A case that fails is
reported with its reason and the others still run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.grouping import SeriesKind, group_files
from dicomnode.models.pipelines import Pipeline
from dicomnode.run.case import Case, CaseRunner, CaseSummary, is_nifti, safe_name


@dataclass(frozen=True)
class SkippedSeries:
    """A series that is not segmented, and why (a :class:`SeriesKind` value)."""

    series_instance_uid: str
    files: int
    reason: str


@dataclass
class CaseOutcome:
    case: Case
    ok: bool
    reason: str = ""
    summary: CaseSummary | None = None
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)


def find_cases(source: Path, calling_ae_title: str | None = None
               ) -> tuple[list[Case], list[SkippedSeries]]:
    """The cases under ``source`` (a file or a folder) and the series set aside.

    ``calling_ae_title`` enters the UIDs derived for files without a Study Instance UID, as
    the receiver uses the sender's AE title; by default each file's Source Application Entity
    Title (files from the node's spool carry it), else empty."""
    if source.is_file():
        files: Iterable[Path] = [source]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
    else:
        raise FileNotFoundError(f"{source} does not exist")
    files = list(files)
    cases = [Case(safe_name(p.name.split(".nii")[0]), "nifti", (p,))
             for p in files if is_nifti(p)]
    groups, _ = group_files((p for p in files if not is_nifti(p)), calling_ae_title)
    skipped: list[SkippedSeries] = []
    for group in groups:
        uid = group.series.series_instance_uid
        if group.kind is not SeriesKind.VOLUME:
            skipped.append(SkippedSeries(uid, len(group.paths), group.kind.value))
            continue
        cases.append(Case(safe_name(uid), "dicom", tuple(group.paths),
                          group.study.study_instance_uid, uid))
    return cases, skipped


def run_one(runner: CaseRunner, case: Case, pipeline: Pipeline, out: Path,
            encode: bool) -> CaseOutcome:
    start = time.perf_counter()
    try:
        summary = runner.run(case, pipeline, out / case.name, encode=encode)
    except Exception as exc:  # one bad series must not stop a cohort run; reported per case
        return CaseOutcome(case, False, f"{type(exc).__name__}: {exc}",
                           seconds=time.perf_counter() - start)
    return CaseOutcome(case, True, summary=summary, seconds=time.perf_counter() - start,
                       outputs=list(summary.outputs))


def process_cases(runner: CaseRunner, cases: list[Case], pipeline: Pipeline, out: Path, *,
                  encode: bool = True, progress: bool = True,
                  workers: int = 2) -> list[CaseOutcome]:
    """Run ``pipeline`` on each case, writing its outputs under ``out/<case>``.

    ``workers`` cases are in flight at once: while one is on the device (the runtime's lock lets
    one network pass run at a time), the next is read, decoded and preprocessed, and the previous
    one resampled back and encoded. Outcomes come back in the order of ``cases``.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    outcomes: list[CaseOutcome | None] = [None] * len(cases)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="case") as pool, \
            tqdm(total=len(cases), desc=pipeline.name, unit="case", disable=not progress) as bar:
        futures = {pool.submit(run_one, runner, case, pipeline, out, encode): i
                   for i, case in enumerate(cases)}
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
            bar.update()
    return [o for o in outcomes if o is not None]
