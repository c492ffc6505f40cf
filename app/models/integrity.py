"""Whether a model file still matches its manifest, without hashing it on every download.

A file is hashed in full the first time this process serves it; what ``stat`` said then (size,
mtime, ctime, inode, device) is kept with the time of that check. A later download trusts the
stamp while ``stat`` says the same, and hashes again when anything changed, when the stamp is
older than ``SAFEPATCH_MODEL_REVERIFY_S``, or when the file had changed so shortly before the
check that a change right after it could have kept the same timestamps. Any write changes the
ctime, which no program can set back, so a file rewritten in place is caught on its next
download; a change that leaves every stat field alone (bits rotting on the disk, a raw write to
the device) is caught by the periodic re-hash. docs/reliability.md#model-downloads.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from contracts.manifest import ManifestEntry, file_sha256

# File timestamps come from a coarse clock (a jiffy; whole seconds on some file systems): a
# change this close before a check could leave the same stamp behind, so such a check is not
# trusted, and the next download hashes again (git's "racily clean" rule).
RACY_MARGIN_NS = 2_000_000_000
MAX_STAMPS = 4096  # files remembered per process (least recently served forgotten first)


class ModelFileMismatch(Exception):
    """The file is missing or its size or sha256 differs from the manifest."""


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, result: os.stat_result) -> Stamp:
        return cls(
            result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino, result.st_dev
        )


@dataclass(frozen=True)
class Verified:
    stamp: Stamp
    checked_ns: int  # wall clock when the hash began
    checked_at: float  # monotonic, for the re-verification period


class FileChecks:
    """The stamps of files verified by this process, keyed by path and expected sha256."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verified: OrderedDict[tuple[str, str], Verified] = OrderedDict()

    def trusted(
        self, path: Path, entry: ManifestEntry, *, reverify_s: float
    ) -> os.stat_result | None:
        """``path``'s stat when its last check still holds; else None (hash it again)."""
        try:
            result = path.stat()
        except OSError:
            return None
        key = (str(path), entry.sha256)
        with self._lock:
            verified = self._verified.get(key)
            if verified is not None:
                self._verified.move_to_end(key)
        if (
            verified is None
            or verified.stamp != Stamp.of(result)
            or time.monotonic() - verified.checked_at >= reverify_s
            or max(result.st_mtime_ns, result.st_ctime_ns) >= verified.checked_ns - RACY_MARGIN_NS
        ):
            return None
        return result

    def verify(self, path: Path, entry: ManifestEntry) -> os.stat_result:
        """Hash ``path`` in full; remember its stamp when it matches, else raise."""
        checked_ns, checked_at = time.time_ns(), time.monotonic()
        try:
            before = path.stat()
        except FileNotFoundError as error:
            raise ModelFileMismatch(f"{path}: listed in the manifest but missing") from error
        if before.st_size != entry.size or file_sha256(path) != entry.sha256:
            self.forget(path, entry)
            raise ModelFileMismatch(f"{path}: sha256 does not match the manifest")
        after = path.stat()
        if Stamp.of(after) != Stamp.of(before):
            raise ModelFileMismatch(f"{path}: changed while it was being checked")
        with self._lock:
            self._verified[(str(path), entry.sha256)] = Verified(
                Stamp.of(after), checked_ns, checked_at
            )
            while len(self._verified) > MAX_STAMPS:
                self._verified.popitem(last=False)
        return after

    def forget(self, path: Path, entry: ManifestEntry) -> None:
        with self._lock:
            self._verified.pop((str(path), entry.sha256), None)


# One per process: every request of this API process shares what it has verified.
FILE_CHECKS = FileChecks()
