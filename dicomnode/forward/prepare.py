"""What one delivery sends: the source series or the job's results, de-identified with the
destination's profile, without the objects whose pixels may show an identity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from converters.deid import Deidentified, Deidentifier, burned_in_reason
from dicomnode.config import DeidentificationConfig, DestinationConfig
from dicomnode.store.models import Instance, Pseudonym, utcnow

#: Delivery names of forwarded source series: ``forward:<destination>``.
FORWARD_PREFIX = "forward:"


def forward_delivery(destination: str) -> str:
    return f"{FORWARD_PREFIX}{destination}"


def forwarded_destination(delivery: str) -> str | None:
    """The destination a forward delivery goes to; None for any other delivery."""
    return delivery[len(FORWARD_PREFIX):] if delivery.startswith(FORWARD_PREFIX) else None


def source_datasets(session: Session, spool_root: Path, series_id: int) -> list[Dataset]:
    """Every instance of the series as held in the spool."""
    paths = session.scalars(select(Instance.path).where(Instance.series_id == series_id)
                            .order_by(Instance.id)).all()
    return [pydicom.dcmread(spool_root / path) for path in paths]


@dataclass
class Prepared:
    """The objects to send, the profile applied (None: as held) and what was kept back."""

    datasets: list[Dataset]
    profile: str | None = None
    withheld: list[dict[str, str]] = field(default_factory=list)
    records: list[Deidentified] = field(default_factory=list)


def prepare(datasets: Sequence[Dataset], destination: DestinationConfig,
            deidentification: DeidentificationConfig, *, source: bool) -> Prepared:
    """De-identify for ``destination`` when it names a profile.

    Burned-in annotation is only judged on source objects: the node's own preview has level
    names drawn into it (hence BurnedInAnnotation YES) but nothing about the patient.
    Raises ValueError when the site key cannot be read.
    """
    name = destination.deidentify
    if name is None:
        return Prepared(list(datasets))
    profile = deidentification.profile(name)
    if profile is None:
        raise ValueError(f"profile {name!r} is not defined under deidentification.profiles")
    deidentifier = Deidentifier(deidentification.key(), profile.options(), profile=name)
    prepared = Prepared([], profile=name)
    for ds in datasets:
        reason = burned_in_reason(ds, profile.burned_in_modalities) if source else None
        if reason is not None and not profile.send_burned_in:
            prepared.withheld.append({"sop": str(ds.SOPInstanceUID), "reason": reason})
            continue
        record = deidentifier.apply(ds)
        prepared.datasets.append(record.dataset)
        prepared.records.append(record)
    return prepared


def record_pseudonyms(session: Session, prepared: Prepared) -> int:
    """Keep the pseudonym → original map of what was sent (``store_mapping``); returns how
    many new rows were written."""
    assert prepared.profile is not None
    wanted: dict[tuple[str, str], str] = {}
    for record in prepared.records:
        wanted[("patient", record.pseudonym.patient_id)] = record.original_patient_id
        wanted[("study", record.study_uid[1])] = record.study_uid[0]
        wanted[("series", record.series_uid[1])] = record.series_uid[0]
    added = 0
    for (kind, pseudonym), original in wanted.items():
        if not pseudonym or session.scalar(select(Pseudonym.id).where(
                Pseudonym.kind == kind, Pseudonym.pseudonym == pseudonym)) is not None:
            continue
        session.add(Pseudonym(kind=kind, pseudonym=pseudonym, original=original[:64],
                              profile=prepared.profile, created_at=utcnow()))
        added += 1
    return added
