"""Association slots: ``node.max_associations`` counts associations across the whole node.

One receiver process counts in memory (:class:`LocalSlots`); the receiver processes of a node
count in shared memory (:class:`SharedSlots`), one count per process so that the node can
give back the slots of a process that died (:meth:`SharedSlots.clear`).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Protocol


class Slots(Protocol):
    """Where :class:`~dicomnode.receiver.Receiver` takes a slot for each association."""

    def take(self) -> bool:
        """Take a slot; False when all ``node.max_associations`` are in use."""
        ...

    def give_back(self) -> None:
        """Give back a slot taken by :meth:`take`."""
        ...


class LocalSlots:
    """The slots of a receiver that is alone on its port."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)


class SharedSlots:
    """The slots of receiver process ``number`` among several on one port: ``counts`` holds
    each process's associations in shared memory.

    No lock: a process killed while it held one would stop every other from ever taking a
    slot. Each process writes only its own count, and takes a slot by counting itself first
    and then looking at the sum: the limit is never exceeded, and two processes taking the
    last slot at the same instant may both refuse (the sender retries)."""

    def __init__(self, counts: ctypes.Array[ctypes.c_int], number: int, limit: int):
        self.counts = counts
        self.number = number
        self.limit = limit
        self._lock = threading.Lock()  # this process's threads, one count each

    def take(self) -> bool:
        with self._lock:
            self.counts[self.number] += 1
            if sum(self.counts) > self.limit:
                self.counts[self.number] -= 1
                return False
            return True

    def give_back(self) -> None:
        with self._lock:
            self.counts[self.number] = max(0, self.counts[self.number] - 1)

    @staticmethod
    def in_use(counts: ctypes.Array[ctypes.c_int]) -> int:
        """Associations open in all processes."""
        return sum(counts)

    @staticmethod
    def clear(counts: ctypes.Array[ctypes.c_int], number: int) -> None:
        """Give back every slot of process ``number`` (it died with associations open)."""
        counts[number] = 0
