"""Split the frames of one series into stacks, and choose the primary stack.

A *stack* is a set of parallel frames that can form one volume. Frames go to different
stacks when they differ in series, echo, temporal position, b-value or enhanced StackID
(:class:`~converters.volume.frames.StackIdentity`), when their slice normals differ by more
than ``split_angle_deg`` (axial and sagittal in one series; smaller differences are an
inconsistent stack, reported later), or when positions repeat: a repeated acquisition is
split by AcquisitionNumber when that separates the copies, otherwise by occurrence in
InstanceNumber order (first copy of each position → stack 1, second → stack 2, …).

Primary stack (the default of ``select_stack``): the stack with the most frames; ties go to
the earliest echo / temporal position / lowest b-value (then the lowest AcquisitionNumber
and repeat), then to the stack whose first InstanceNumber is lowest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import StackSelectionError
from .frames import Frame, StackIdentity


@dataclass(frozen=True, eq=False)
class Stack:
    """Frames of one stack (unsorted) and what sets it apart from the other stacks.

    ``repeat`` is the AcquisitionNumber (or 1-based occurrence) that split duplicated
    positions, "" when positions did not repeat.
    """

    identity: StackIdentity
    frames: tuple[Frame, ...]
    normal: tuple[float, float, float]
    repeat: str = ""

    def describe(self) -> str:
        """One line for logs: e.g. ``8 frames, normal (0, 0, 1), echo 2``."""
        parts = [f"{len(self.frames)} frames",
                 "normal (" + ", ".join(f"{v:.3g}" for v in self.normal) + ")"]
        for name in ("echo", "temporal", "b_value", "stack_id"):
            value = getattr(self.identity, name)
            if value is not None:
                parts.append(f"{name.replace('_', '-')} {value}")
        if self.repeat:
            parts.append(f"repeat {self.repeat}")
        return ", ".join(parts)

    def sort_key(self) -> tuple[object, ...]:
        """Primary-stack order: most frames, earliest identity, first repeat, first sent."""
        repeat = (0, float(self.repeat)) if _is_number(self.repeat) else (1, 0.0)
        return (-len(self.frames), self.identity.sort_key(), repeat,
                min(f.order for f in self.frames))


StackSelector = Callable[[Sequence[Stack]], Stack]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normal(frame: Frame) -> np.ndarray:
    n: np.ndarray = np.cross(frame.orientation[:3], frame.orientation[3:])
    return n / float(np.linalg.norm(n))


def split_stacks(frames: Sequence[Frame], split_angle_deg: float = 5.0,
                 position_tolerance_mm: float = 0.01) -> list[Stack]:
    """Group ``frames`` into stacks, sorted primary first (see the module docstring)."""
    by_identity: dict[StackIdentity, list[Frame]] = {}
    for frame in frames:
        by_identity.setdefault(frame.identity, []).append(frame)
    stacks: list[Stack] = []
    cos_limit = np.cos(np.radians(split_angle_deg))
    for identity, group in by_identity.items():
        clusters: list[tuple[np.ndarray, list[Frame]]] = []
        for frame in group:
            n = _normal(frame)
            for reference, members in clusters:
                # Antiparallel normals are the same family of planes (flipped cosines).
                if abs(float(np.dot(reference, n))) >= cos_limit:
                    members.append(frame)
                    break
            else:
                clusters.append((n, [frame]))
        for normal, members in clusters:
            x, y, z = (float(v) for v in normal)
            for repeat, part in _split_repeats(members, normal, position_tolerance_mm):
                stacks.append(Stack(identity, tuple(part), (x, y, z), repeat))
    return sorted(stacks, key=Stack.sort_key)


def _position_keys(frames: Sequence[Frame], tolerance: float) -> list[tuple[int, int, int]]:
    keys = []
    for f in frames:
        x, y, z = (int(v) for v in np.round(f.position / tolerance))
        keys.append((x, y, z))
    return keys


def _split_repeats(frames: list[Frame], normal: np.ndarray, tolerance: float
                   ) -> list[tuple[str, list[Frame]]]:
    """Split frames whose positions repeat; [("", frames)] when none repeat."""
    # Positions rounded to 10× the tolerance so jitter below it still counts as repeated.
    keys = _position_keys(frames, tolerance * 10)
    if len(set(keys)) == len(keys):
        return [("", frames)]
    by_acquisition: dict[str, list[Frame]] = {}
    for frame in frames:
        by_acquisition.setdefault(frame.acquisition, []).append(frame)
    if len(by_acquisition) > 1 and all(
            len(set(_position_keys(part, tolerance * 10))) == len(part)
            for part in by_acquisition.values()):
        return sorted(by_acquisition.items())
    occurrences: dict[tuple[int, int, int], int] = {}
    split: dict[int, list[Frame]] = {}
    for frame, key in sorted(zip(frames, keys, strict=True), key=lambda fk: fk[0].order):
        rank = occurrences.get(key, 0)
        occurrences[key] = rank + 1
        split.setdefault(rank, []).append(frame)
    return [(str(rank + 1), part) for rank, part in sorted(split.items())]


def choose_stack(stacks: Sequence[Stack], select: int | StackSelector | None) -> Stack:
    """The stack to load: ``select`` None → the primary (``stacks[0]``, as sorted by
    :func:`split_stacks`); an int → that index in the same order; a callable → its pick."""
    if select is None:
        return stacks[0]
    if isinstance(select, int):
        if not -len(stacks) <= select < len(stacks):
            raise StackSelectionError(
                f"select_stack={select} but the series has {len(stacks)} stack(s): "
                + "; ".join(f"[{i}] {s.describe()}" for i, s in enumerate(stacks)))
        return stacks[select]
    chosen = select(stacks)
    if not any(chosen is stack for stack in stacks):
        raise StackSelectionError("select_stack returned a stack that is not one of this series")
    return chosen
