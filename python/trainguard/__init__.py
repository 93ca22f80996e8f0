"""Scan model files before they are loaded, and load checkpoints without unpickling them.

- :func:`scan` / :func:`scan_bytes` judge a file against an allowlist policy and return a
  :class:`Report` (``clean``, ``suspicious``, ``malicious`` or ``inconclusive``). Nothing in the
  file is imported, called or unpickled.
- :func:`safe_load` returns a checkpoint's tensors (PyTorch zip, legacy PyTorch, safetensors)
  reconstructed from bytes by the native reader: the pickle is interpreted as data, never run.
- :func:`guard_torch_load` makes every ``torch.load`` in the process scan its input first and
  raise :class:`UnsafeModelError` unless it is clean, including the calls made inside libraries.

Every error raised here is a :class:`TrainguardError`. The work is done by the private native
module ``trainguard._native`` (Rust: the ``tg-scan`` and ``tg-tensor`` crates).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Union

from . import _native
from ._native import (
    CheckpointError,
    Finding,
    PolicyError,
    Report,
    TrainguardError,
    UnsafeModelError,
)

if TYPE_CHECKING:
    import numpy
    import torch

__all__ = [
    "CheckpointError",
    "Finding",
    "PolicyError",
    "Report",
    "TorchLoadGuard",
    "TrainguardError",
    "UnsafeModelError",
    "guard_torch_load",
    "safe_load",
    "scan",
    "scan_bytes",
    "Watch",
    "WatchError",
    "watch",
]

StrPath = Union[str, "os.PathLike[str]"]


def _entries(allow: Iterable[str]) -> list[str]:
    # A bare string is one entry, not a sequence of one-letter entries.
    if isinstance(allow, str):
        return [allow]
    return list(allow)


def _path(path: StrPath | bytes) -> str:
    return os.fsdecode(os.fspath(path))


def scan(path: StrPath, policy: str = "default", allow: Iterable[str] = ()) -> Report:
    """Scan the file at ``path`` under ``policy`` (``"default"`` or ``"weights-only"``).

    ``allow`` adds ``module.name[:class|function|constant]`` entries to the policy. An
    unreadable file is reported ``inconclusive``, not raised.
    """
    return _native.scan_path(_path(path), policy, _entries(allow))


def scan_bytes(
    data: bytes | bytearray | memoryview,
    name: str = "<bytes>",
    policy: str = "default",
    allow: Iterable[str] = (),
) -> Report:
    """Scan ``data`` as if it were a file called ``name``."""
    return _native.scan_bytes(name, bytes(data), policy, _entries(allow))


# safetensors dtype names (as the native reader returns them) to numpy and torch dtypes.
_NUMPY_DTYPES = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "I64": "<i8",
    "U64": "<u8",
    "F64": "<f8",
}
_TORCH_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}


def safe_load(
    path: StrPath,
    device: str | torch.device = "cpu",
    *,
    policy: str = "default",
    allow: Iterable[str] = (),
) -> dict[str, torch.Tensor] | dict[str, numpy.ndarray]:
    """Load the tensors of a checkpoint without unpickling it.

    The file is scanned first and refused with :class:`UnsafeModelError` unless clean. Then its
    tensors are rebuilt from their bytes: ``torch.Tensor`` on ``device`` when torch is
    installed, ``numpy.ndarray`` otherwise. Nested containers are flattened to ``a.b.c`` names;
    values that are not tensors (step counters, hyper-parameters) are not returned.
    """
    import numpy as np

    tensors, _dropped = _native.read_tensors(_path(path), policy, _entries(allow))
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and sys.byteorder != "little":
        raise CheckpointError("safe_load builds torch tensors on little-endian hosts only")
    out: dict[str, Any] = {}
    for name, dtype, shape, data in tensors:
        raw = np.frombuffer(data, dtype=np.uint8)
        if torch is not None:
            t = torch.from_numpy(raw).view(getattr(torch, _TORCH_DTYPES[dtype])).reshape(shape)
            out[name] = t if str(device) == "cpu" else t.to(device)
        elif dtype in _NUMPY_DTYPES:
            out[name] = raw.view(np.dtype(_NUMPY_DTYPES[dtype])).reshape(shape)
        else:
            raise CheckpointError(
                f"{_path(path)}: tensor {name} is {dtype}, which numpy cannot hold: install torch"
            )
    return out


class _Installed:
    """The state of an installed guard: what it replaced and how it scans."""

    def __init__(self, original: Callable[..., Any], policy: str, allow: list[str]) -> None:
        self.original = original
        self.policy = policy
        self.allow = allow
        self.wrapper: Callable[..., Any] | None = None


_lock = threading.Lock()
_installed: _Installed | None = None


def _guarded_load(state: _Installed, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Scan what ``torch.load`` was given, then hand the real loader exactly what was scanned."""
    if isinstance(f, (str, bytes, os.PathLike)):
        path = _path(f)
        # Opening first raises the loader's own error for a missing file, and pins the file:
        # on Linux, `/proc/self/fd/N` reopens this very inode, so replacing the path between the
        # scan and the load (a rename over it) changes neither what is scanned nor what is
        # loaded. Elsewhere the path is scanned and then loaded by name.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            pinned = f"/proc/self/fd/{fd}"
            if not os.path.exists(pinned):
                pinned = path
            _native.check_path(pinned, state.policy, state.allow, display=path)
            return state.original(pinned, *args, **kwargs)
        finally:
            os.close(fd)
    if hasattr(f, "read"):
        data = bytes(f.read())
        display = str(getattr(f, "name", f"<{type(f).__name__}>"))
        _native.check_bytes(display, data, state.policy, state.allow)
        # The loader gets the bytes that were scanned, not a second read of the stream.
        return state.original(io.BytesIO(data), *args, **kwargs)
    raise TrainguardError(
        f"torch.load was given a {type(f).__name__}, which trainguard cannot scan"
    )


def _make_wrapper(state: _Installed) -> Callable[..., Any]:
    @functools.wraps(state.original)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        return _guarded_load(state, f, args, kwargs)

    load.__trainguard_guard__ = state  # type: ignore[attr-defined]
    return load


class TorchLoadGuard:
    """What :func:`guard_torch_load` returns; as a context manager it restores ``torch.load``.

    Only the call that installed the guard restores it: nested or repeated calls leave the
    guard that was already there in place.
    """

    def __init__(self, owner: bool) -> None:
        self._owner = owner

    @property
    def installed_here(self) -> bool:
        """Whether this call installed the guard (and so restores it)."""
        return self._owner

    def restore(self) -> None:
        """Put the original ``torch.load`` back, if this call installed the guard."""
        global _installed
        if not self._owner:
            return
        self._owner = False
        import torch
        import torch.serialization

        with _lock:
            state = _installed
            if state is None:
                return
            for mod in (torch, torch.serialization):
                if getattr(mod, "load", None) is state.wrapper:
                    mod.load = state.original
            _installed = None

    def __enter__(self) -> TorchLoadGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


def guard_torch_load(policy: str = "default", allow: Iterable[str] = ()) -> TorchLoadGuard:
    """Make every ``torch.load`` in this process scan its input first.

    ``torch.load`` and ``torch.serialization.load`` are replaced, so libraries that call
    ``torch.load`` (transformers, lightning, …) are covered without changing them. Paths
    (``str``, ``bytes``, ``os.PathLike``) are opened once and scanned on disk, and on Linux the
    loader reads that same open file (as ``/proc/self/fd/N``), so a file renamed over the path
    after the scan is not loaded; file-like objects are read, the bytes scanned, and the loader
    gets those same bytes. Anything not clean raises :class:`UnsafeModelError` before the real
    loader runs.

    Idempotent: while a guard is installed, another call changes nothing (asking for a different
    policy then raises :class:`PolicyError`). Use it plainly for the whole process, or as
    ``with guard_torch_load(): ...`` to restore the original ``torch.load`` on exit. A library
    that bound ``from torch import load`` before the guard was installed keeps the original.
    """
    global _installed
    entries = _entries(allow)
    # Refuse a bad policy now, not at the first load.
    _native.scan_bytes("<policy check>", b"", policy, entries)
    import torch
    import torch.serialization

    with _lock:
        if _installed is not None:
            if (_installed.policy, _installed.allow) != (policy, entries):
                raise PolicyError(
                    f"torch.load is already guarded with policy {_installed.policy!r} and "
                    f"allow={_installed.allow!r}"
                )
            return TorchLoadGuard(owner=False)
        state = _Installed(torch.load, policy, entries)
        state.wrapper = _make_wrapper(state)
        for mod in (torch, torch.serialization):
            if getattr(mod, "load", None) is state.original:
                mod.load = state.wrapper
        _installed = state
        return TorchLoadGuard(owner=True)


# The training-loop telemetry client (pure Python; imports torch only when watch() is called).
# Imported after everything above so `trainguard.watch` is the function, not the submodule.
from .watch import Watch, WatchError, watch  # noqa: E402
