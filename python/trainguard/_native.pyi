# Type stubs for the private native module `trainguard._native` (python/src/lib.rs).
# Import from `trainguard`, not from here.

import os
from typing import Union

_Path = Union[str, os.PathLike[str]]

class TrainguardError(Exception):
    """Base class of every error trainguard raises."""

class UnsafeModelError(TrainguardError):
    """A file was refused because its scan verdict is not clean."""

    report: Report

class PolicyError(TrainguardError):
    """An unknown policy name or a malformed allowlist entry."""

class CheckpointError(TrainguardError):
    """A clean checkpoint that cannot be turned into tensors."""

class Finding:
    """One finding of a scan."""

    @property
    def rule(self) -> str: ...
    @property
    def verdict(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def location(self) -> str:
        """`member@offset`, `member`, `@offset` or the empty string."""
    @property
    def member(self) -> str | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def evidence(self) -> str | None: ...

class Report:
    """The result of scanning one file."""

    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def verdict(self) -> str:
        """`clean`, `suspicious`, `malicious` or `inconclusive`."""
    @property
    def size(self) -> int: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def findings(self) -> tuple[Finding, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...
    @property
    def is_clean(self) -> bool: ...

def scan_path(path: _Path, policy: str = "default", allow: list[str] = ...) -> Report: ...
def scan_bytes(
    display: str, data: bytes, policy: str = "default", allow: list[str] = ...
) -> Report: ...
def check_path(
    path: _Path, policy: str = "default", allow: list[str] = ..., display: str | None = None
) -> Report: ...
def check_bytes(
    display: str, data: bytes, policy: str = "default", allow: list[str] = ...
) -> Report: ...
def read_tensors(
    path: _Path, policy: str = "default", allow: list[str] = ...
) -> tuple[list[tuple[str, str, tuple[int, ...], bytearray]], list[tuple[str, str]]]: ...

# The per-step reads of `trainguard.watch` on the CPU (private to it).

debug_build: bool
"""True when this module was built without optimisations (cargo's dev profile)."""

class WordSums:
    """Wrap-around sums of the integer words of fixed tensors, and copies of byte ranges of them.

    `words[i]` and `data[i]` are views of the same bytes: as int64, int32, int16 or uint8 words
    and as uint8 (C-contiguous). `plans` are lists of `(tensor, lo, hi)` byte ranges. From 1 MiB
    up (where the process may use more than one CPU) each `sums()` shares its pass with a
    persistent worker thread, and `post()` hands it the pass over tensors `0..defer`;
    `threads` (1 or 2) forces one way. The bytes are the same.
    """

    def __init__(
        self,
        words: list[object],
        data: list[object],
        plans: list[list[tuple[int, int, int]]] = ...,
        threads: int | None = None,
        defer: int | None = None,
    ) -> None: ...
    def sums(self, *plans: int) -> bytes:
        """8 little-endian bytes per tensor (its sum, sign-extended), then each plan's bytes."""
    def post(self, *plans: int) -> bool:
        """Start what `sums(*plans)` returns and return: tensors `defer..` are read now, tensors
        `0..defer` by the worker thread meanwhile (which must not write them until `collect()`).
        False when the worker could not take it (then everything is read now). A pass never
        collected is dropped by the next `post()` or with this object."""
    def collect(self, fresh: bool = False) -> bytes:
        """What `sums(*plans)` returned at `post(*plans)`, once the worker is done (taking the part
        it has not started). `fresh`: read tensors `0..defer` now instead (they were written)."""
    def copy(self, plan: int) -> bytes:
        """The bytes of one plan."""
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def threads(self) -> int:
        """1, or 2 when `sums()` shares its pass with the worker thread."""
    @property
    def worker_bytes(self) -> int:
        """Bytes the worker thread summed in the last `sums()`."""

def sums_worker_thread() -> int | None:
    """The `pthread_t` of the `WordSums` worker thread (for `time.pthread_getcpuclockid`), or
    None before it was started."""

class Gather:
    """Copies of fixed uint8 arrays, concatenated; None once a guard's `dict[key]` is another
    object than the tensor it held."""

    def __init__(self, arrays: list[object], guards: list[tuple[dict[str, object], str, object]] = ...) -> None: ...
    def copy(self) -> bytes | None: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
