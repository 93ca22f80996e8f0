"""Training-loop telemetry for the trainguard collector (``trainguard watch serve``).

One line in a training loop::

    with trainguard.watch(model, optimizer, run="llm-7b", collector="http://10.0.0.5:7411") as w:
        for batch in data:
            loss = model(batch).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            w.log(loss=loss)

Per optimizer step (every ``every`` steps) and rank it records, through the optimizer's own step
hooks (``register_step_pre_hook`` / ``register_step_post_hook``, torch >= 2.0):

- ``wall_s``: wall-clock seconds of the rank's own timed section. The default ``section="optimizer"``
  times the optimizer step itself (pre-hook to post-hook), which is where the incident's sleeps
  were and which excludes the wait inside data-parallel collectives that every rank shares (in a
  synchronous job the time *between* steps is the same on every rank, sleeper or not).
  ``section="interval"`` times post-hook to post-hook instead, for single-process jobs.
  On CUDA, ``device_s`` is the CUDA-event time of the same section (null on CPU).
- the applied update Δθ (θ after − θ before) against the update the optimizer's state predicts
  (SGD: −lr·(momentum buffer or grad + weight decay); Adam/AdamW: −lr·m̂/(√v̂+ε) with bias
  correction and decoupled decay), on a fixed random window of each parameter (at most
  ``sample`` elements in all): their dot product, cosine and norms. A healthy step gives
  cosine ≈ +1, a flipped one ≈ −1. The windows are contiguous, so that reading them is a copy
  of a few byte ranges, not an index gather per tensor.
- fingerprints that data-parallel replicas must share bit for bit. The parameter fingerprint
  covers *every* element of every parameter and buffer at *every* measured step: each tensor's
  bytes are read as the widest integer words that tile them and summed with wrap-around (exact
  and independent of summation order, so any thread count or device gives the same bits; one
  memory pass at the speed of a float ``sum``); the per-tensor sums are hashed in order. Any
  change to one element changes its word by a non-zero amount, hence the sum, so a single
  tampered weight shows at the first step after it. Sums do not see a permutation inside a
  tensor or edits made to cancel out, so each step also hashes one ``1/full_every`` slice of the
  parameters position by position (SHA-256 of the bytes on the CPU, the two mod-(2^31−1) lanes
  of :func:`fingerprint_lanes` on CUDA): every element is covered that way once per
  ``full_every`` steps. The update fingerprint hashes the bytes of Δθ on the windows. On CUDA
  only the per-tensor sums, two lanes and the windows' Δθ (a few thousand elements) are copied
  to the host.
- hashes of every RNG state (Python ``random``, NumPy's global generator, ``torch``'s CPU and
  every CUDA generator) and every seeding call (``random.seed``, ``numpy.random.seed``,
  ``torch.manual_seed``, ``torch.cuda.manual_seed(_all)``, wrapped from the moment this module and
  the library are both imported; importing this module does not import torch or NumPy) with the
  caller's file and line. Seeds set through a name bound before that (``from torch import
  manual_seed``) are not seen; the RNG state hashes still are.
- the process identity (host, pid, user, rank, world size).

Step events carry only the generators replicas must agree on: torch's (fixed default seed) and
Python's and NumPy's once a recorded call seeded them (before that they come from OS entropy).
Buffers are left out of the fingerprint of a ``DistributedDataParallel`` model that broadcasts
them: each rank's forward pass updates them (batch-norm statistics) from its own shard, so
replicas legitimately differ at the optimizer step until the next forward re-broadcasts rank 0's.

The training thread only takes what must be read at the step (the windows, the word sums, raw
generator states, a copy of the hashed slice); hashing, the update check's arithmetic, building
the event and JSON happen on the sender thread. On the CPU the reads are native
(``trainguard._native``: ``WordSums``, ``Gather``): at each step one call sums every tensor's
words and copies the slice and the windows in the same pass over the weights, one more copies
the optimizer state the check needs, and one the windows before the step; the NumPy views they
read are re-derived only when a tensor moves (one call checks every data pointer). From 1 MiB of
weights up the pass over the parameters is handed, where the process may use a second CPU, to a
persistent native worker thread, which makes it after the post-hook returned, while the loop
goes on (zero_grad, forward and backward do not write parameters; buffers, which a forward pass
may write, are read in the hook); the next pre-hook (or `close()`) collects it before the
optimizer writes them again. A parameter written in place between the two hooks in a way torch
counts (``torch.no_grad()`` edits, loads) is read again there, so that step's fingerprint is of
the parameters as the next step finds them; a write torch does not count (through ``.data``,
NumPy, another thread) races with the worker, and the fingerprint is then of no use to compare
(divergence), never a crash. Where no worker runs the same words are read at the same points.
A step's record is queued at the next step (or `close()`), so `log(loss=...)` after
`optimizer.step()` attaches to it; on CUDA it waits, without a host sync, until its events and
copies completed.
`close()` (or leaving the `with` block without an exception) sends a `process_exit` with status 0,
so a finished rank is not reported missing; after an exception no exit is claimed.

Events are queued and posted in batches by a background thread (``urllib``, bearer token) to
``POST {collector}/v1/runs/{run}/events``; a second thread enqueues heartbeats. When the collector
cannot be reached, batches are appended to a local JSON Lines spool file and re-sent, oldest
first, once it answers again; a spool left by an earlier process of the same run and rank is
re-sent at start. Nothing here decides whether a run was sabotaged: the detectors run in the
collector, outside the training process.

The wire format is the one documented in the ``tg-watch`` crate (``crates/tg-watch/src/lib.rs``).
"""

from __future__ import annotations

import array
import atexit
import collections
import ctypes
import getpass
import hashlib
import importlib.abc
import itertools
import json
import logging
import math
import operator
import os
import random as _random
import re
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

__all__ = ["watch", "Watch", "WatchError"]

log = logging.getLogger("trainguard.watch")

#: Modulus of the fingerprints (the Mersenne prime 2^31 − 1): products of two residues fit int64.
_P = (1 << 31) - 1
#: Position multipliers and offsets of the two fingerprint lanes (fixed: replicas must agree).
#: Two 31-bit lanes: a chance change goes unnoticed with probability about 2^-62.
_LANES = (
    (1_103_515_245 % _P, 12_345),
    (1_664_525, 1_013_904_223 % _P),
)
_perf_counter = time.perf_counter
_is = operator.is_
_grad = operator.attrgetter("grad")
_version = operator.attrgetter("_version")
_NONES = itertools.repeat(None)

#: Weights from which the host path's pass over the parameters runs after the post-hook (on
#: the native worker thread where it can run: the size from which `WordSums` shares its pass).
_DEFER_MIN_BYTES = 1 << 20

#: Events in one POST.
_MAX_BATCH = 500
#: Limits from the wire format (crates/tg-watch/src/event.rs).
_MAX_SEED_CALLS = 64
_MAX_STACK = 4096
_RNG_NAMES = ("python", "numpy", "torch_cpu", "torch_cuda")
_RUN_ID = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,128}")


try:  # one exception family for the whole package
    from ._native import TrainguardError as _ErrorBase
except ImportError:  # pragma: no cover - the native module is always built with the package
    _ErrorBase = RuntimeError


#: The per-step reads of the host code path, one call each (`trainguard._native`, bound by
#: `_load_native`).
_Gather: Any = None
_WordSums: Any = None
_native_tried = False


def _load_native() -> bool:
    """Bind `_Gather` and `_WordSums`; False when the native module cannot be imported (then CPU
    tensors take the device code path). Imported when a watch starts, not with this module: this
    file loaded on its own (bench/watch_overhead.py, a test) imports the installed package for
    them, whose own copy of this module must not install the seed hooks before this one."""
    global _Gather, _WordSums, _native_tried
    if not _native_tried:
        _native_tried = True
        try:
            from ._native import Gather, WordSums
        except ImportError:
            try:
                from trainguard._native import Gather, WordSums
            except ImportError:  # pragma: no cover - the package is always built with it
                return False
        _Gather, _WordSums = Gather, WordSums
    return _WordSums is not None


class WatchError(_ErrorBase):
    """The watch could not be set up (bad arguments, run already registered without a token)."""


# --------------------------------------------------------------------------------------------
# Seeding calls: wrapped at import so that the seeds set before `watch()` are recorded too.
# --------------------------------------------------------------------------------------------

_seed_lock = threading.Lock()
_seed_calls: list[dict[str, Any]] = []  # every call, in order (bounded below)
_seed_total = 0  # calls ever recorded; indexes into the history for consumers
_SEED_HISTORY = 4096
_seed_local = threading.local()
#: Generators seeded through a recorded call. Python's and NumPy's global generators start from OS
#: entropy, so they differ between replicas until seeded; torch's start from a fixed seed.
_seeded: set[str] = {"torch_cpu", "torch_cuda"}
_SEEDS = {
    "random.seed": ("python",),
    "numpy.random.seed": ("numpy",),
    "torch.manual_seed": ("torch_cpu", "torch_cuda"),
    "torch.cuda.manual_seed": ("torch_cuda",),
    "torch.cuda.manual_seed_all": ("torch_cuda",),
}


def _caller_stack() -> str:
    frames = traceback.extract_stack()[:-3]  # drop this helper and the wrapper
    frames = [f for f in frames if not f.filename.endswith(("torch/random.py", "torch/cuda/random.py"))]
    tail = frames[-6:]
    text = "".join(f"{f.filename}:{f.lineno} in {f.name}\n" for f in reversed(tail))
    return text[:_MAX_STACK]


def _record_seed(api: str, seed: Any) -> None:
    global _seed_total
    value: Optional[int] = None
    try:
        s = int(seed)
        if 0 <= s < (1 << 64):
            value = s
    except (TypeError, ValueError, OverflowError):
        value = None
    call = {"api": api, "seed": value, "stack": _caller_stack()}
    with _seed_lock:
        _seeded.update(_SEEDS.get(api, ()))
        _seed_calls.append(call)
        _seed_total += 1
        if len(_seed_calls) > _SEED_HISTORY:
            del _seed_calls[: len(_seed_calls) - _SEED_HISTORY]


def _seed_calls_since(index: int) -> tuple[list[dict[str, Any]], int]:
    """Calls recorded after the `index`-th, and the new index."""
    with _seed_lock:
        total = _seed_total
        new = total - index
        calls = _seed_calls[max(0, len(_seed_calls) - new):] if new > 0 else []
    return [dict(c) for c in calls], total


def _wrap_seed(owner: Any, attr: str, api: str) -> None:
    original = getattr(owner, attr, None)
    if original is None or getattr(original, "__trainguard_wrapped__", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nested = getattr(_seed_local, "active", False)
        if not nested:
            seed = args[0] if args else kwargs.get("seed", kwargs.get("a"))
            _record_seed(api, seed)
        _seed_local.active = True
        try:
            return original(*args, **kwargs)
        finally:
            _seed_local.active = nested

    wrapper.__trainguard_wrapped__ = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", attr)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, attr, wrapper)


def _install_seed_hooks() -> None:
    """Wrap the seeding functions of `random` and of NumPy and torch if they are loaded."""
    _wrap_seed(_random, "seed", "random.seed")
    npr = sys.modules.get("numpy.random")
    if npr is not None:
        _wrap_seed(npr, "seed", "numpy.random.seed")
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        _wrap_seed(torch, "manual_seed", "torch.manual_seed")
        for name, attrs in (("torch.random", ("manual_seed",)), ("torch.cuda", ("manual_seed", "manual_seed_all"))):
            module = sys.modules.get(name)
            for attr in attrs if module is not None else ():
                api = "torch.manual_seed" if name == "torch.random" else f"torch.cuda.{attr}"
                _wrap_seed(module, attr, api)


class _SeedHookFinder(importlib.abc.MetaPathFinder):
    """Wraps NumPy's and torch's seeding functions as soon as they are imported, so importing this
    module neither imports them (a scan-only user never loads torch) nor misses a seed set between
    their import and `watch()`."""

    _names = ("torch", "numpy.random")

    def __init__(self) -> None:
        # Set while this finder asks the others: a second copy of this module (loaded from a
        # file path, as the benchmark does) installs its own finder, which asks this one back.
        self._asking = threading.local()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self._names or getattr(self._asking, "on", False):
            return None
        self._asking.on = True
        try:
            return self._find(name, path, target)
        finally:
            self._asking.on = False

    def _find(self, name: str, path: Any, target: Any) -> Any:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            loader = spec.loader
            exec_module = getattr(loader, "exec_module", None)
            if exec_module is not None:

                def run(module: Any, _exec: Callable[[Any], None] = exec_module) -> None:
                    _exec(module)
                    _install_seed_hooks()

                try:
                    loader.exec_module = run  # type: ignore[union-attr]
                except AttributeError:
                    pass
            return spec
        return None


if not any(isinstance(f, _SeedHookFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SeedHookFinder())
_install_seed_hooks()


# --------------------------------------------------------------------------------------------
# RNG state hashes
# --------------------------------------------------------------------------------------------


def _h(data: Any) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


#: Bytes of NumPy's `mt19937_state` struct: 624 uint32 key words and the int position.
_MT_STATE_BYTES = 624 * 4 + 4
_np_state_cache: Optional[tuple[Any, int]] = None


def _numpy_state(np: Any) -> Any:
    """The global NumPy generator's state, cheaply.

    ``np.random.get_state()`` builds a tuple around a copy of the 624-word key (tens of µs);
    through the bit generator's documented ``ctypes.state_address`` the same key and position are
    one 2,500-byte copy. The legacy Gaussian cache is not part of that struct: a replica that
    differs only there shows at the next step, when the draws that consume it have moved the
    key. Any other bit generator falls back to ``get_state``.
    """
    global _np_state_cache
    bg = getattr(getattr(np.random.mtrand, "_rand", None), "_bit_generator", None)
    cached = _np_state_cache
    if cached is None or cached[0] is not bg:
        if type(bg).__name__ != "MT19937":
            kind, keys, pos, has_gauss, gauss = np.random.get_state()
            return kind.encode() + keys.tobytes() + repr((int(pos), int(has_gauss), float(gauss))).encode()
        # Holding `bg` keeps the struct alive and the cached address valid.
        cached = _np_state_cache = (bg, int(bg.ctypes.state_address))
    return ctypes.string_at(cached[1], _MT_STATE_BYTES)


def _numpy_capture() -> Any:
    np = sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np
        except ImportError:
            return None
    return _numpy_state(np)


def _cuda_capture() -> Any:
    torch = sys.modules.get("torch")
    # is_initialized() first: is_available() asks NVML or the driver (tens of µs).
    if torch is not None and torch.cuda.is_initialized() and torch.cuda.is_available():
        return torch.cuda.get_rng_state_all()
    return None


def _rng_capturers(names: Iterable[str]) -> list[tuple[str, Callable[[], Any]]]:
    """(name, function): the function returns a copy of that generator's raw state, taken when
    it is called (hashed by `_rng_digest`), or None when the generator is not there."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for name in names:
        if name == "python":
            out.append((name, _random.getstate))  # an immutable tuple
        elif name == "numpy":
            out.append((name, _numpy_capture))
        elif name == "torch_cpu":
            torch = sys.modules.get("torch")
            if torch is not None:  # a new tensor: later draws do not change it
                out.append((name, torch.default_generator.get_state))
        elif name == "torch_cuda":
            torch = sys.modules.get("torch")
            # Where CUDA cannot be used its generators never exist: no call per step for them.
            if torch is not None and torch.cuda.is_available():
                out.append((name, _cuda_capture))
    return out


def _rng_capture(names: Iterable[str]) -> dict[str, Any]:
    """The raw states of the generators named (copies, taken now; hashed by `_rng_digest`)."""
    out: dict[str, Any] = {}
    for name, capture in _rng_capturers(names):
        raw = capture()
        if raw is not None:
            out[name] = raw
    return out


def _rng_digest(name: str, raw: Any) -> str:
    if name == "python":
        version, internal, gauss = raw
        try:
            words = array.array("I", internal).tobytes()  # 624 words < 2^32 and the index
        except (OverflowError, TypeError):
            words = repr(internal).encode()
        return _h(words + repr((version, gauss)).encode())
    if name == "numpy":
        return _h(raw)
    if name == "torch_cpu":
        return _h(raw.numpy().tobytes())
    return _h(b"".join(s.numpy().tobytes() for s in raw))


def _rng_digests(raw: dict[str, Any]) -> dict[str, str]:
    return {name: _rng_digest(name, state) for name, state in raw.items()}


def rng_hashes(names: Iterable[str] = _RNG_NAMES) -> dict[str, str]:
    """Hex hashes of the generator states named (those available in this process)."""
    names = set(names)
    if names & {"torch_cpu", "torch_cuda"}:
        try:
            import torch  # noqa: F401  (imported here so that _rng_capture finds it)
        except ImportError:
            pass
    return _rng_digests(_rng_capture(n for n in _RNG_NAMES if n in names))


# --------------------------------------------------------------------------------------------
# Fingerprints and the update check (on the device; tensors in, tensors out)
# --------------------------------------------------------------------------------------------


def _words(x: Any) -> tuple[Any, int]:
    """`x` (1-D, contiguous) reinterpreted as integer words, and words per element."""
    import torch

    size = x.element_size()
    if size % 4 == 0:
        w = x.view(torch.int32)
    elif size == 2:
        w = x.view(torch.int16)
    else:
        w = x.view(torch.uint8)
    return w, w.numel() // max(1, x.numel())


def _lane_weights(positions: Any, per: int) -> Any:
    """The [4, n·per] int64 weights ((pos·a + b) mod p) of words at model positions `positions`."""
    import torch

    pos = positions.to(torch.int64)
    if per > 1:
        pos = (pos.unsqueeze(1) * per + torch.arange(per, device=pos.device)).reshape(-1)
    pos = torch.remainder(pos, _P)
    a = torch.tensor([a for a, _ in _LANES], dtype=torch.int64, device=pos.device).unsqueeze(1)
    b = torch.tensor([b for _, b in _LANES], dtype=torch.int64, device=pos.device).unsqueeze(1)
    return torch.remainder(pos.unsqueeze(0) * a + b, _P)


def _fold(x: Any, weights: Any) -> Any:
    """Σ bits_i·weights[:, i] mod p: one int64 per lane, on `x`'s device. |bits| < 2^31 and
    weights < 2^31, so each product fits int64 before its reduction."""
    import torch

    w, _ = _words(x.contiguous())
    return torch.remainder(torch.remainder(w.to(torch.int64).unsqueeze(0) * weights, _P).sum(1), _P)


def fingerprint_lanes(x: Any, positions: Any) -> Any:
    """Two int64 lanes: Σ bits_i·((pos_i·a + b) mod p) mod p over the integer words of `x`.

    `x` is 1-D; `positions[i]` is the global position of `x[i]` in the model, so that a full and a
    sampled fingerprint, or two parameter orders, never collide by construction. Everything stays
    on `x`'s device; a sum of at most 2^32 products below 2^62 cannot overflow int64.
    """
    import torch

    _, per = _words(x.contiguous())
    out = None
    chunk = 1 << 20  # bounds the temporary weights to 32 MiB
    for start in range(0, x.numel(), chunk):
        part = x[start:start + chunk]
        lanes = _fold(part, _lane_weights(positions[start:start + chunk], per))
        out = lanes if out is None else torch.remainder(out + lanes, _P)
    if out is None:
        return torch.zeros(len(_LANES), dtype=torch.int64, device=x.device)
    return out


def _lanes_hex(values: Iterable[int]) -> str:
    return "".join(f"{int(v) % _P:08x}" for v in values)


def fingerprint(x: Any, positions: Optional[Any] = None) -> str:
    """Hex fingerprint of a tensor's bits (all elements, positions 0..n−1 unless given)."""
    import torch

    flat = x.detach().reshape(-1)
    if positions is None:
        positions = torch.arange(flat.numel(), device=flat.device)
    return _lanes_hex(fingerprint_lanes(flat, positions).tolist())


def _scalar(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _expected_sgd(group: dict, buf: Optional[Any], p_before: Any, grad: Any) -> Any:
    """−lr·d for torch.optim.SGD, d = the post-step momentum buffer (or the nesterov mix) or
    grad + wd·θ; flat float32 arrays (NumPy or torch) in and out."""
    lr = _scalar(group["lr"])
    momentum = group.get("momentum", 0.0) or 0.0
    wd = group.get("weight_decay", 0.0) or 0.0
    g = -grad if group.get("maximize", False) else grad
    if wd:
        g = g + wd * p_before
    if momentum and buf is not None:
        d = g + momentum * buf if group.get("nesterov", False) else buf
    else:
        d = g
    return d * -lr


def _expected_adam(xp: Any, group: dict, m: Any, v: Any, step: Any, p_before: Any, decoupled: bool) -> Any:
    """−lr·m̂/(√v̂+ε) (and −lr·wd·θ for AdamW) for torch.optim.Adam/AdamW from the post-step state,
    with `xp` NumPy or torch; `step` is a number or a per-element array."""
    lr = _scalar(group["lr"])
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    eps = _scalar(group["eps"])
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = xp.sqrt(v)
    if isinstance(step, (int, float)):
        denom *= 1.0 / math.sqrt(bc2)
        denom += eps
        u = m / denom
        u *= -lr / bc1
    else:
        u = (m / (denom / bc2 ** 0.5 + eps)) * (-lr / bc1)
    wd = group.get("weight_decay", 0.0) or 0.0
    if decoupled and wd:
        u -= p_before * (lr * wd)
    return u


def _optimizer_kind(optimizer: Any) -> Optional[str]:
    import torch

    # Exact classes: a subclass may change the rule, and a wrong reference is a false alarm.
    kinds = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    return kinds.get(type(optimizer))


class _Views:
    """Windows [lo, hi) of a list of tensors that live across steps (the parameters, one kind of
    optimizer state), kept as views and concatenated into a new flat tensor in one call (the
    device code path). Checking that no tensor moved (``p.data = ...``, ``load_state_dict``) is
    one list of data pointers; the cached views keep the old storages alive, so a new tensor
    cannot reuse a cached address unnoticed."""

    __slots__ = ("spans", "ptrs", "views")

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans
        self.ptrs: Optional[list[int]] = None
        self.views: list[Any] = []

    def cat(self, tensors: list[Any]) -> Any:
        """A copy of `tensors[i]` at span i, flat; None when a tensor is too small for its span."""
        import torch

        ptrs = [t.data_ptr() for t in tensors]
        if ptrs != self.ptrs:
            views = []
            for t, (lo, hi) in zip(tensors, self.spans):
                flat = t.detach().reshape(-1)
                if flat.numel() < hi:
                    return None
                views.append(flat[lo:hi])
            # A non-contiguous tensor's reshape is a copy: such lists are re-read every time.
            contiguous = all(t.is_contiguous() for t in tensors)
            self.ptrs, self.views = (ptrs, views) if contiguous else (None, [])
        else:
            views = self.views
        return torch.cat(views) if len(views) > 1 else views[0].clone()


class _Bucket:
    """The windows of a chunk of parameters of one (device, dtype, param group) on the device
    code path: the update check and the update fingerprint are one concatenation per quantity and
    a few vector operations, all on the device."""

    np = None  # the device path's arithmetic is torch's
    host = False

    def __init__(self, params: list[Any], group: dict, spans: list[tuple[int, int]]) -> None:
        import torch

        self.params = params
        self.group = group
        self.spans = spans
        self.param_views = _Views(spans)
        self.state_views: dict[str, _Views] = {}
        self.step_views = _Views([(0, 1)] * len(params))
        counts = [hi - lo for lo, hi in spans]
        self.counts = torch.tensor(counts, device=params[0].device)
        self.before: Any = None
        # The per-parameter optimizer state dicts, re-read when the optimizer's state table is
        # replaced or grows (`load_state_dict`, the first step); each dict is updated in place.
        self._states: Optional[list[dict]] = None
        self._states_key: Any = None

    def states(self, optimizer: Any) -> list[dict]:
        table = optimizer.state
        key = (id(table), len(table))
        if key != self._states_key or self._states is None:
            self._states = [table.get(p) or {} for p in self.params]
            self._states_key = key
        return self._states

    def gather_state(self, states: list[dict], key: str) -> Any:
        """The optimizer state `key` (a tensor per parameter) at the windows, or None."""
        import torch

        tensors = [st.get(key) for st in states]
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            return None
        views = self.state_views.get(key)
        if views is None:
            views = self.state_views[key] = _Views(self.spans)
        return views.cat(tensors)

    def gather_fresh(self, tensors: list[Any]) -> Any:
        """The windows of tensors that are new every step (gradients): nothing is cached."""
        import torch

        views = [t.detach().reshape(-1)[lo:hi] for t, (lo, hi) in zip(tensors, self.spans)]
        return torch.cat(views) if len(views) > 1 else views[0].clone()

    def f32(self, x: Any) -> Any:
        return x.float()  # no copy when it already is


class _HostBucket:
    """The windows of a chunk of CPU parameters (float16/32/64) on the host code path: the
    parameters' windows are copied by the tracked tensors' `WordSums` (plan `plan`), before the
    step and, with the sums, after it; the optimizer state the reference needs by one native
    `Gather.copy()`. The arithmetic runs on the sender thread, on those copies, with NumPy.

    The state windows carry guards, checked in the same native call: every state tensor still the
    one in its dict (the dicts are re-read when the optimizer's state table is replaced or grows:
    `load_state_dict`, the first step)."""

    host = True

    def __init__(self, params: list[Any], group: dict, spans: list[tuple[int, int]], np: Any, number: int,
                 plan: int) -> None:
        self.params = params
        self.group = group
        self.spans = spans
        self.np = np
        self.number = number  # the chunk's index in `_Tracked.windows`
        self.plan = plan  # its plan in `_Tracked.summer`
        self.dtype = np.dtype(str(params[0].dtype).replace("torch.", ""))
        self.counts = np.array([hi - lo for lo, hi in spans])
        self.window = int(self.counts.sum())
        self._state: Any = None  # (table, len(table), keys, Gather, layout)

    def state_copy(self, optimizer: Any, keys: tuple[str, ...]) -> Optional[tuple[bytes, list]]:
        """The optimizer state `keys` of every parameter, at the windows (the per-parameter
        scalar ``step`` whole), concatenated, and its layout [(key, dtype, scalar)]; None when a
        parameter lacks one."""
        table = optimizer.state
        cached = self._state
        if cached is not None and cached[0] is table and cached[1] == len(table) and cached[2] == keys:
            if cached[3] is None:  # the same table could not be read last time either
                return None
            out = cached[3].copy()  # None when a state tensor was replaced
            if out is not None:
                return out, cached[4]
        built = self._build_state(table, keys)
        gather, layout, cached_ok = built if built is not None else (None, None, True)
        # Holding the table keeps its id from being reused by a replacement. A gather over
        # copies (non-contiguous state) is read once.
        self._state = (table, len(table), keys, gather, layout) if cached_ok else None
        if gather is None:
            return None
        out = gather.copy()
        return None if out is None else (out, layout)

    def _build_state(self, table: Any, keys: tuple[str, ...]) -> Optional[tuple[Any, list, bool]]:
        """(Gather, layout, whether it can be reused), or None when a parameter lacks the state."""
        import torch

        states = [table.get(p) for p in self.params]
        if not all(type(st) is dict for st in states):
            return None
        arrays: list[Any] = []
        guards: list[tuple[dict, str, Any]] = []
        layout = []
        reusable = True
        for key in keys:
            tensors = [st.get(key) for st in states]
            if not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors):
                return None
            # A non-contiguous tensor's reshape is a copy, taken now (the state of a
            # non-contiguous parameter is laid out like it).
            reusable = reusable and all(t.is_contiguous() for t in tensors)
            scalar = key == "step"
            dtypes = {t.dtype for t in tensors}
            if len(dtypes) != 1:
                return None
            dtype = None
            try:
                for st, t, (lo, hi) in zip(states, tensors, self.spans):
                    flat = t.detach().reshape(-1).numpy()
                    dtype = flat.dtype
                    if scalar:
                        if flat.size != 1:
                            return None
                        arrays.append(flat.view(self.np.uint8))
                    else:
                        if flat.size < hi:
                            return None
                        arrays.append(flat[lo:hi].view(self.np.uint8))
                    guards.append((st, key, t))
            except TypeError:  # a dtype NumPy cannot view
                return None
            layout.append((key, dtype, scalar))
        return _Gather(arrays, guards), layout, reusable

    def unpack(self, data: bytes, layout: list) -> dict[str, Any]:
        """The arrays of a `state_copy`, by key."""
        np = self.np
        out = {}
        offset = 0
        for key, dtype, scalar in layout:
            count = len(self.params) if scalar else self.window
            out[key] = np.frombuffer(data, dtype, count, offset)
            offset += count * dtype.itemsize
        return out

    def f32(self, x: Any) -> Any:
        return x.astype(self.np.float32, copy=False)


#: The optimizer state the Adam reference reads, without and with amsgrad.
_ADAM_STATE = {False: ("exp_avg", "exp_avg_sq", "step"), True: ("exp_avg", "max_exp_avg_sq", "step")}

#: Parameters whose update is checked at one step. Every tensor costs the training thread a few
#: µs per step here (pointer checks, state look-ups), so larger models rotate through chunks of
#: this many: a whole-model flip shows at its first step, one confined to a single tensor within
#: one rotation.
_CHECK_TENSORS = 16

#: Read CPU tensors natively, with NumPy arithmetic on the sender thread (tests switch it off to
#: run the device code path on the CPU).
_USE_NUMPY = True

#: Parameter dtypes NumPy can view: a model with others (bfloat16) takes the torch path.
_HOST_DTYPES = ("torch.float16", "torch.float32", "torch.float64")


def _plan_windows(optimizer: Any, budget: int, seed: int) -> list[tuple[list[Any], dict, list[tuple[int, int]]]]:
    """Chunks of at most `_CHECK_TENSORS` parameters of one (device, dtype, param group), with a
    random window per parameter sized in proportion to it within its chunk (at least one
    element, about `budget` per chunk); the same on every rank for the same `seed`."""
    import torch

    params: list[tuple[Any, dict]] = []
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen or p.numel() == 0:
                continue
            seen.add(id(p))
            params.append((p, group))
    by_kind: dict[tuple, list[tuple[Any, dict]]] = {}
    for p, group in params:
        by_kind.setdefault((str(p.device), p.dtype, id(group)), []).append((p, group))
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for members in by_kind.values():
        for start in range(0, len(members), _CHECK_TENSORS):
            chunk = members[start:start + _CHECK_TENSORS]
            total = sum(p.numel() for p, _ in chunk)
            spans = []
            for p, _ in chunk:
                n = p.numel()
                share = max(1, min(n, (budget * n) // max(1, total)))
                lo = int(torch.randint(0, n - share + 1, (1,), generator=gen))
                spans.append((lo, lo + share))
            chunks.append(([p for p, _ in chunk], chunk[0][1], spans))
    return chunks


def _sum_words(t: Any) -> Any:
    """`t`'s bytes as a flat tensor of the widest integer words that tile them (a view of `t` when
    it is contiguous). Summing words with wrap-around is exact, so the order of the summation
    (threads, devices, kernels) cannot change the result, and one changed byte always changes it."""
    import torch

    flat = t.detach().reshape(-1).view(torch.uint8)
    for size, dtype in ((8, torch.int64), (4, torch.int32), (2, torch.int16)):
        if flat.numel() % size == 0:
            try:
                return flat.view(dtype)
            except RuntimeError:  # a storage offset that the wider word does not divide
                continue
    return flat


class _Tracked:
    """The tensors the parameter fingerprint covers: the optimizer's parameters, then the model's
    buffers (read from their modules every step, since a buffer is replaced by assignment), with
    their word views cached while every tensor is at the same data pointer (and every buffer the
    same object). The cached views keep the old storages alive, so a new tensor cannot reuse a
    cached address unnoticed; `gen` counts the generations of the parameters' addresses.

    On the host path the views are NumPy arrays in one native `WordSums`, with its plans: the
    byte ranges of each slice of the positional hash (plan `part`, for `parts` slices) and of each
    update-check chunk's windows (plan `parts + chunk`), copied in the same call as the sums."""

    def __init__(self, optimizer: Any, model: Any, host: bool, overlap: bool = True) -> None:
        import torch

        seen: set[int] = set()
        self.params: list[Any] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    self.params.append(p)
        # (the module's buffer table, name): a buffer replaced by assignment lands in that table.
        self.buffers: list[tuple[dict, str]] = []
        if not _buffers_differ_by_design(model):
            modules = getattr(model, "modules", None)
            for module in modules() if callable(modules) else ():
                table = getattr(module, "_buffers", None)
                for name, buf in (table or {}).items():
                    if buf is not None:
                        self.buffers.append((table, name))
        self.host = host  # native reads and NumPy views (CPU) or torch views (any device)
        self.parts = 0
        self.windows: list[list[tuple[int, int, int]]] = []
        self.empty = torch.empty(0)
        self._data_ptr = torch.Tensor.data_ptr
        self._same_ptrs = _bulk_ptr_check()
        self._indices: list[int] = []  # 0..len(ptrs), for `_same_ptrs`
        self.ptrs: Optional[list[int]] = None  # while the cached views are valid
        self.last: Optional[list[int]] = None  # the parameters' addresses in generation `gen`
        self.gen = 0
        self.words: list[Any] = []  # per tensor: its words (torch views; the device path)
        self.sizes: list[int] = []  # elements per tensor
        self.summer: Any = None  # host path: the `WordSums`
        self.may_overlap = overlap  # `watch(overlap=...)`
        self.overlap = False  # host path: whether the pass over the parameters ends after the hook
        self.segments: list[list[tuple[int, int, int, int]]] = []  # per part: see `refresh`
        self.roll_bytes: list[int] = []  # per part: the bytes of its copy
        self.window_ok: list[bool] = []  # per chunk: every window inside its tensor
        self.objs: list[Any] = []  # the buffers the views were derived from

    def plan(self, parts: int, windows: Iterable[list[tuple[Any, int, int]]]) -> None:
        """The host path's plans: `parts` slices, and the chunks' windows [(parameter, first
        element, end element)]; the views are derived here, before the first step."""
        index = {id(p): i for i, p in enumerate(self.params)}
        self.parts = parts
        self.windows = [[(index[id(p)], lo, hi) for p, lo, hi in chunk] for chunk in windows]
        self.ptrs = None
        self.refresh(self.tensors())

    def tensors(self) -> list[Any]:
        if not self.buffers:
            return self.params
        out = list(self.params)
        empty = self.empty
        for table, name in self.buffers:
            b = table.get(name)
            out.append(b if b is not None else empty)
        return out

    def unmoved(self, tensors: list[Any]) -> bool:
        """Whether the cached views are still valid for `tensors` (this step's `tensors()`): every
        tensor at the data pointer they were derived at, every buffer the same object."""
        ptrs = self.ptrs
        if ptrs is None:
            return False
        if self.buffers and not all(map(_is, self.objs, tensors[len(self.params):])):
            return False
        same = self._same_ptrs
        if same is not None:
            try:
                return same(tensors, ptrs, self._indices)
            except (TypeError, RuntimeError):  # another signature in another torch: the plain way
                self._same_ptrs = None
        return list(map(self._data_ptr, tensors)) == ptrs

    def refresh(self, tensors: list[Any], ptrs: Optional[list[int]] = None) -> None:
        """Re-derive the word views when a tensor moved (or every time for non-contiguous ones)."""
        import torch

        if ptrs is None:
            ptrs = list(map(self._data_ptr, tensors))
            if ptrs == self.ptrs:
                return
        if ptrs[:len(self.params)] != self.last:  # the update check's windows are in parameters
            self.gen += 1
            self.last = ptrs[:len(self.params)]
        words = [_sum_words(t) for t in tensors]
        self.sizes = sizes = [t.numel() for t in tensors]
        if self.host:
            esizes = [t.element_size() for t in tensors]
            plans = []
            # Slice `part` of the positional hash: (tensor, first element, offset, bytes) per
            # segment, for the hash, and the byte ranges to copy.
            self.segments, self.roll_bytes = [], []
            for part in range(self.parts):
                segments, spans, offset = [], [], 0
                for i, lo, hi in _slice_ranges(sizes, part, self.parts):
                    n = (hi - lo) * esizes[i]
                    segments.append((i, lo, offset, n))
                    spans.append((i, lo * esizes[i], lo * esizes[i] + n))
                    offset += n
                self.segments.append(segments)
                self.roll_bytes.append(offset)
                plans.append(spans)
            self.window_ok = []
            for chunk in self.windows:
                ok = all(hi <= sizes[i] for i, _, hi in chunk)
                self.window_ok.append(ok)
                plans.append([(i, lo * esizes[i], hi * esizes[i]) for i, lo, hi in chunk] if ok else [])
            raw = [w.view(torch.uint8).numpy() for w in words]
            # The parameters' part of the pass may run after the post-hook returns (`post`):
            # nothing writes them until the next optimizer step. Buffers are read in the hook:
            # the forward pass writes some (batch-norm statistics).
            self.summer = _WordSums([w.numpy() for w in words], raw, plans, defer=len(self.params))
            # Decided by the size alone, which replicas share (whether the worker can run is
            # not: a replica whose pass runs in the hook reads the same words at the same
            # points, see `Watch._join`).
            self.overlap = self.may_overlap and self.summer.nbytes >= _DEFER_MIN_BYTES
        else:
            self.words = words
        self.objs = tensors[len(self.params):]
        # A non-contiguous tensor's words are a copy, taken now: re-derived at every read.
        self.ptrs = ptrs if all(t.is_contiguous() for t in tensors) else None
        self._indices = list(range(len(ptrs)))


def _bulk_ptr_check() -> Optional[Callable[[list, list, list], bool]]:
    """torch's one-call check that tensors are at given data pointers (``tensors[i].data_ptr() ==
    ptrs[i]`` for every index given; C++, no per-tensor Python call or int object), or None where
    this torch has none. It is private (written for CUDA graph trees, torch >= 2.1), so it is
    checked once on a tensor that moved and one that did not before it is trusted."""
    import torch

    check = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)
    if check is None:
        return None
    a, b = torch.zeros(2), torch.zeros(2)
    try:
        ok = check([a, b], [a.data_ptr(), b.data_ptr()], [0, 1]) is True
        ok = ok and check([a, b[1:]], [a.data_ptr(), b.data_ptr()], [0, 1]) is False
    except (TypeError, RuntimeError):
        return None
    return check if ok else None


def _buffers_differ_by_design(model: Any) -> bool:
    """True for a DistributedDataParallel model that broadcasts its buffers at each forward: the
    forward then updates them from the rank's own shard, so replicas differ at the optimizer step."""
    return bool(getattr(model, "broadcast_buffers", False)) and hasattr(model, "module") and hasattr(
        model, "process_group"
    )


def _slice_ranges(sizes: list[int], part: int, parts: int) -> list[tuple[int, int, int]]:
    """(tensor index, lo, hi): the elements of slice `part` of `parts` of the concatenation."""
    total = sum(sizes)
    a, b = part * total // parts, (part + 1) * total // parts
    out = []
    offset = 0
    for i, n in enumerate(sizes):
        lo, hi = max(a, offset), min(b, offset + n)
        if lo < hi:
            out.append((i, lo - offset, hi - offset))
        offset += n
        if offset >= b:
            break
    return out



# --------------------------------------------------------------------------------------------
# Transport: queue → batches → collector, spool when it is down
# --------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


#: How long the sender thread sleeps between units of its work (an event finished or encoded).
#: A thread that holds the GIL makes the training thread wait for it, up to the interpreter's
#: switch interval (5 ms) and longer inside one C call such as ``json.dumps`` of a whole batch;
#: inside the optimizer step that wait is a straggler-like outlier of watch's own making. A real
#: sleep hands the GIL over, so the training thread waits at most for one unit.
_YIELD_S = 20e-6


def _encode_events(events: list[dict]) -> bytes:
    """``{"events": [...]}`` as JSON, one event per ``json.dumps`` call, yielding between them."""
    parts = []
    for i, e in enumerate(events):
        parts.append(json.dumps(e, allow_nan=False, separators=(",", ":")))
        if i % 8 == 7:
            time.sleep(_YIELD_S)
    return ('{"events":[' + ",".join(parts) + "]}").encode()


def _post(url: str, body: Any, token: Optional[str], timeout: float) -> Any:
    if isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise _HttpError(e.code, e.read().decode("utf-8", "replace")) from None
    return json.loads(text) if text.strip() else None


def register_run(collector: str, run: Optional[str], timeout: float = 5.0) -> tuple[str, str]:
    """Register `run` (a fresh id when None) with the collector; returns (run, token)."""
    body = {"run": run} if run is not None else {}
    out = _post(collector.rstrip("/") + "/v1/runs", body, None, timeout)
    return str(out["run"]), str(out["token"])


class _Sender:
    """Background delivery: batches from the queue, the spool file first when it has a backlog."""

    def __init__(
        self, collector: str, run: str, token: Optional[str], spool: Path, flush_s: float,
        prepare: Optional[Callable[[dict], dict]] = None,
    ) -> None:
        # Step records (dicts with a "_dev" entry) are turned into events by `prepare` here, on
        # this thread: hashing and event building cost the training thread nothing but the GIL.
        self.prepare = prepare
        self.dropped = 0
        self.url = f"{collector.rstrip('/')}/v1/runs/{urllib.parse.quote(run, safe='')}/events"
        self.collector = collector
        self.run = run
        self.token = token
        self.spool = spool
        self.rejected = Path(str(spool) + ".rejected")
        self.flush_s = flush_s
        self.queue: collections.deque[dict] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.in_flight = 0
        self.sent = 0
        self.spooled = 0
        self.rejected_events = 0
        self.last_error: Optional[str] = None
        self._warned = False
        self._retry_at = 0.0
        self._backoff = 0.25
        self.thread = threading.Thread(target=self._loop, name="trainguard-watch-sender", daemon=True)

    # -- called from the training thread --------------------------------------------------
    def put(self, event: dict) -> None:
        queue = self.queue
        queue.append(event)  # a deque: thread-safe without the lock, which only wakes the thread
        if len(queue) >= _MAX_BATCH:
            with self.cond:
                self.cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until the queue and the spool are empty (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self._retry_at = 0.0
            self.cond.notify()
            while self.queue or self.in_flight or self._spool_has_data():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
                self.cond.notify()
        return True

    # -- the thread ------------------------------------------------------------------------
    def _spool_has_data(self) -> bool:
        try:
            return self.spool.stat().st_size > 0
        except OSError:
            return False

    def _loop(self) -> None:
        while True:
            with self.cond:
                if not self.closing and len(self.queue) < _MAX_BATCH:
                    self.cond.wait(self.flush_s)
                batch = [self.queue.popleft() for _ in range(min(_MAX_BATCH, len(self.queue)))]
                closing = self.closing
                self.in_flight = len(batch)
            try:
                batch = self._prepared(batch)
                self._deliver(batch)
            except Exception as e:  # never let telemetry kill training; keep the events
                self._note(f"unexpected error, events spooled: {e!r}")
                self._append_spool(batch)
            with self.cond:
                self.in_flight = 0
                self.cond.notify_all()
                if closing and not self.queue:
                    return

    def _prepared(self, batch: list[dict]) -> list[dict]:
        if self.prepare is None:
            return batch
        out = []
        for e in batch:
            if "_dev" not in e:
                out.append(e)
                continue
            try:
                out.append(self.prepare(e))
                time.sleep(_YIELD_S)  # see _YIELD_S
            except Exception:  # a bug here must not stop delivery of the other events
                self.dropped += 1
                if self.dropped == 1:
                    log.exception("trainguard.watch: a step record could not be turned into an event")
        return out

    def _note(self, msg: str) -> None:
        self.last_error = msg
        if not self._warned:
            self._warned = True
            log.warning("trainguard.watch: %s (spooling to %s)", msg, self.spool)

    def _ensure_token(self) -> bool:
        if self.token:
            return True
        try:
            _, self.token = register_run(self.collector, self.run)
            return True
        except _HttpError as e:
            self._note(f"cannot register run {self.run}: {e}")
        except (OSError, ValueError, KeyError) as e:
            self._note(f"cannot reach {self.collector}: {e}")
        return False

    def _send(self, events: list[dict]) -> bool:
        """POST one batch; True when stored, False when it must be kept (collector down)."""
        if not self._ensure_token():
            return False
        try:
            _post(self.url, _encode_events(events), self.token, timeout=10.0)
        except _HttpError as e:
            if e.status == 400 or e.status == 413:
                # The collector refused the content itself: retrying cannot help. Keep it apart.
                self._write_lines(self.rejected, events)
                self.rejected_events += len(events)
                log.warning("trainguard.watch: %d events refused (%s), kept in %s", len(events), e, self.rejected)
                return True
            self._note(f"collector answered {e}")
            return False
        except (OSError, ValueError) as e:  # URLError, refused, reset, timeout, bad JSON
            self._note(f"cannot reach {self.collector}: {e}")
            return False
        if self._warned:
            log.warning("trainguard.watch: collector %s reachable again", self.collector)
        self._warned = False
        self.last_error = None
        self.sent += len(events)
        return True

    def _deliver(self, batch: list[dict]) -> None:
        if self._spool_has_data():
            # Order matters to the detectors: new events go behind the backlog.
            if batch:
                self._append_spool(batch)
            if time.monotonic() >= self._retry_at:
                self._drain()
            return
        if batch and not self._send(batch):
            self._append_spool(batch)
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def _write_lines(self, path: Path, events: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e, allow_nan=False, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _append_spool(self, events: list[dict]) -> None:
        if events:
            self._write_lines(self.spool, events)
            self.spooled += len(events)

    def _drain(self) -> None:
        try:
            lines = self.spool.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        mine: list[dict] = []
        others: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                others.append(line)  # a torn last line from a killed process: kept, never sent
                continue
            if isinstance(e, dict) and e.get("run") == self.run:
                mine.append(e)
            else:
                others.append(line)
        done = 0
        ok = True
        while done < len(mine):
            chunk = mine[done:done + _MAX_BATCH]
            if not self._send(chunk):
                ok = False
                break
            done += len(chunk)
        if others:
            # Another run's events (a shared spool path) or torn lines: set aside, not retried.
            foreign = Path(str(self.spool) + ".foreign")
            foreign.parent.mkdir(parents=True, exist_ok=True)
            with open(foreign, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in others))
                f.flush()
                os.fsync(f.fileno())
            log.warning("trainguard.watch: %d spooled lines of other runs moved to %s", len(others), foreign)
        rest = [json.dumps(e, allow_nan=False, separators=(",", ":")) for e in mine[done:]]
        tmp = self.spool.with_name(self.spool.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in rest))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.spool)
        if ok:
            self._backoff = 0.25
        else:
            self._schedule_retry()


# --------------------------------------------------------------------------------------------
# The handle
# --------------------------------------------------------------------------------------------


def _finite_or_str(v: float) -> Any:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _default_spool(run: str, rank: int) -> Path:
    base = os.environ.get("TRAINGUARD_SPOOL_DIR")
    if base:
        root = Path(base)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(cache) / "trainguard" / "spool"
    return root / f"{run}.rank{rank}.jsonl"


def _identity(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    dist_rank = dist_world = None
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist_rank, dist_world = dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    if rank is None:
        rank = dist_rank if dist_rank is not None else int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = dist_world if dist_world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise WatchError(f"rank {rank} is not below world_size {world_size}")
    return rank, world_size


def _user() -> Optional[str]:
    try:
        return getpass.getuser()[:256]
    except (KeyError, OSError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else None


class Watch:
    """A watched optimizer: hooks installed, threads running. Use `close()` or a `with` block."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        run: str,
        collector: str,
        rank: int,
        world_size: int,
        token: Optional[str],
        every: int,
        spool: Path,
        seed: Optional[int],
        heartbeat_s: float,
        sample: int,
        full_every: int,
        section: str,
        replica_group: Optional[str],
        rng: Iterable[str],
        flush_s: float,
        sample_seed: int,
        overlap: bool = True,
    ) -> None:
        import torch

        self.model = model
        self.optimizer = optimizer
        self.run = run
        self.collector = collector
        self.rank = rank
        self.world_size = world_size
        self.every = every
        self.spool = spool
        self.full_every = full_every
        self.section = section
        self.replica_group = replica_group
        self.rng_names = tuple(rng)
        self.heartbeat_s = heartbeat_s
        self._kind = _optimizer_kind(optimizer)
        # Everything on the CPU is read by the native module (one call per quantity and hook,
        # where torch or NumPy would take one call per tensor) and the arithmetic runs with NumPy
        # on the sender thread; anything else stays on its device, from where only the sums and
        # the windows' few scalars are copied back.
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self._cuda = torch.cuda.is_available() and any(t.is_cuda for t in params)
        self._np: Any = None
        if _USE_NUMPY and all(t.device.type == "cpu" for t in params) and _load_native():
            try:
                import numpy

                self._np = numpy
            except ImportError:
                pass
        self._tracked = tr = _Tracked(optimizer, model, host=self._np is not None, overlap=overlap)
        if self._np is not None and any(t.device.type != "cpu" for t in tr.tensors()):
            self._np = None
            tr.host = False
        self._host = self._np is not None
        # bfloat16 and other dtypes NumPy cannot hold: the update check takes the torch path.
        host_math = self._host and all(str(t.dtype) in _HOST_DTYPES for t in params)
        plan = _plan_windows(optimizer, sample, sample_seed)
        parts = full_every if full_every > 0 else 0
        self._buckets: list[Any] = [
            _HostBucket(ps, group, spans, self._np, i, parts + i) if host_math else _Bucket(ps, group, spans)
            for i, (ps, group, spans) in enumerate(plan)
        ]
        if self._host:
            windows = [[(p, lo, hi) for p, (lo, hi) in zip(ps, spans)] for ps, _, spans in plan]
            tr.plan(parts, windows if host_math else [])  # the first views, before the first step
        self._base = {
            "run": run,
            "rank": rank,
            "world_size": world_size,
            "host": socket.gethostname()[:256],
            "pid": os.getpid(),
        }
        user = _user()
        if user:
            self._base["user"] = user
        self._step = 0
        self._measuring = False
        self._chunk: Any = None  # the chunk whose update this step checks
        self._before: Optional[bytes] = None  # host path: its windows at the pre-hook
        self._before_gen = 0  # host path: the tracked generation they were read at
        self._t_pre = 0.0
        self._t_last_post: Optional[float] = None
        self._ev_start: Any = None
        self._pending: Optional[dict] = None  # the last step's record, until finalised
        # Host path: (summer, measurements, record, the parameters' summed version counters) of
        # the step whose pass over the weights the worker thread is making, until `_join` (the
        # next pre-hook at the latest).
        self._inflight: Optional[tuple[Any, dict, dict, int]] = None
        # (record, start, end, done) on CUDA: end closes the timed section, done follows the
        # copies of the step's scalars to the host; a record is read once done has completed.
        self._device_wait: list[tuple[dict, Any, Any, Any]] = []
        self._loss_next: Any = None
        self._seed_index = 0
        self._rng_seeded = -1  # len(_seeded) when `_rng_capturers` was chosen
        self._rng_capturers: list[tuple[str, Callable[[], Any]]] = []
        self._closed = False
        self._lock = threading.Lock()
        self._sender = _Sender(collector, run, token, spool, flush_s, prepare=self._finish)
        self._stop = threading.Event()
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]
        self._base_seed = seed
        self._heart = threading.Thread(target=self._heartbeats, name="trainguard-watch-heartbeat", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, before_others: Optional[Callable[[dict], None]] = None) -> None:
        calls, self._seed_index = _seed_calls_since(0)
        seed = self._base_seed
        if seed is None:
            torch_calls = [c for c in calls if c["api"] == "torch.manual_seed" and c["seed"] is not None]
            if torch_calls:
                seed = torch_calls[-1]["seed"]
        start: dict[str, Any] = {
            "type": "process_start",
            "argv": [a[:4096] for a in sys.argv[:256]],
            "rng": rng_hashes(self.rng_names),
            "seed_calls": calls[-_MAX_SEED_CALLS:],
        }
        if seed is not None:
            start["seed"] = int(seed)
        event = self._event(start)
        if before_others is not None:
            before_others(event)
        else:
            self._sender.put(event)

    def _run_threads(self) -> None:
        self._sender.thread.start()
        self._heart.start()
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        # Never closed: deliver (or spool) what is queued, but claim no exit status; the launcher
        # or the collector's heartbeat timeout says how the process ended.
        self.close(clean=False, timeout=2.0)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # On an exception the process may still be torn down by its launcher, which reports the
        # exit as the kernel saw it; report a clean exit only for a clean end.
        self.close(clean=exc_type is None)

    def close(self, clean: bool = True, timeout: float = 10.0) -> bool:
        """Remove the hooks, send what is left (and, for a clean end, an exit with status 0).

        Returns True when everything reached the collector, False when some is left in the spool.
        """
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self._at_exit)
        for h in self._hooks:
            h.remove()
        self._finalise(sync=True)
        if clean:
            self._sender.put(self._event({"type": "process_exit", "exit_code": 0, "core_dumped": False}))
        self._stop.set()
        delivered = self._sender.flush(timeout)
        with self._sender.cond:
            self._sender.closing = True
            self._sender.cond.notify_all()
        self._sender.thread.join(timeout=max(1.0, timeout))
        if not delivered:
            log.warning(
                "trainguard.watch: collector %s unreachable at close; events kept in %s",
                self.collector, self.spool,
            )
        return delivered

    def flush(self, timeout: float = 10.0) -> bool:
        """Send every completed step now; True once the queue and the spool are empty."""
        self._finalise(sync=True)
        return self._sender.flush(timeout)

    def stats(self) -> dict[str, Any]:
        """Delivery counters: events sent, spooled, refused; the last delivery error."""
        s = self._sender
        return {
            "steps": self._step,
            "sent": s.sent,
            "spooled": s.spooled,
            "rejected": s.rejected_events,
            "dropped": s.dropped,
            "queued": len(s.queue),
            "last_error": s.last_error,
        }

    @property
    def token(self) -> Optional[str]:
        """The run's bearer token (registered on first contact when none was given)."""
        return self._sender.token

    # -- data ------------------------------------------------------------------------------
    def log(self, loss: Any = None) -> None:
        """Attach the loss to the step that just completed (call after `optimizer.step()`)."""
        if loss is None or self._closed:
            return
        # Never a reference to the loss itself: it would keep the step's autograd graph alive
        # until the sender thread drops it. On the CPU, the value (cheaper than `detach()`); on
        # a device, a detached tensor (reading its value would wait for the device).
        try:
            value = loss.item() if loss.is_cpu else loss.detach()
        except AttributeError:  # a number
            value = loss
        except (RuntimeError, ValueError):  # not one element: reported as nan
            value = loss.detach()
        with self._lock:
            rec = self._pending
            if rec is not None and "_loss" not in rec:
                rec["_loss"] = value
            else:
                self._loss_next = value

    def _event(self, body: dict) -> dict:
        e = dict(self._base)
        e["time_unix_s"] = time.time()
        e.update(body)
        return e

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            body: dict[str, Any] = {"type": "heartbeat"}
            if self._step:
                body["step"] = self._step
            self._sender.put(self._event(body))

    # -- hooks -----------------------------------------------------------------------------
    # The hooks read detached views and copies only, so they need no `torch.no_grad()` (whose
    # context manager alone is a measurable part of their cost).
    def _drop_pending(self, rec: dict) -> None:
        """Never queue a record without its measurements: drop `rec` if it is still pending
        (its measuring failed)."""
        with self._lock:
            if self._pending is rec:
                self._pending = None

    def _join(self) -> None:
        """Complete the step whose pass over the weights is in flight (`_measure_host`): wait for
        the worker; before the optimizer writes the weights again, and before the record is
        queued."""
        with self._lock:  # `flush()` may be called from another thread
            inflight, self._inflight = self._inflight, None
        if inflight is not None:
            summer, out, rec, versions = inflight
            # A parameter written in place through torch since the post-hook (a projection or a
            # load between steps, an attacker's edit) may have raced with the worker's reads:
            # they are dropped and the parameters read now, as the next step finds them, which
            # every replica that made the same write agrees on. Writes that bypass the version
            # counters (through `.data`, NumPy, another thread) can only make the fingerprint
            # an arbitrary value, which replicas do not share: divergence, never a crash.
            fresh = sum(map(_version, self._tracked.params)) != versions
            try:
                out["data"] = summer.collect(fresh)
            except BaseException:
                self._drop_pending(rec)
                raise

    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._inflight is not None:
            self._join()
        n = self._step + 1
        measuring = self._measuring = n % self.every == 0
        if measuring:
            buckets = self._buckets
            if buckets:
                chunk = self._chunk = buckets[(n // self.every) % len(buckets)]
                if chunk.host:
                    tr = self._tracked
                    if tr.ptrs is None:  # non-contiguous tensors: their copies are taken per read
                        tr.refresh(tr.tensors())
                    self._before_gen = tr.gen
                    self._before = tr.summer.copy(chunk.plan) if tr.window_ok[chunk.number] else None
                else:
                    chunk.before = chunk.param_views.cat(chunk.params)
            if self._cuda:
                import torch

                self._ev_start = torch.cuda.Event(enable_timing=True)
                self._ev_start.record()
        self._t_pre = _perf_counter()

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        t_post = _perf_counter()
        n = self._step = self._step + 1
        last, self._t_last_post = self._t_last_post, t_post
        if not self._measuring:
            return
        host = self._host
        end = None
        if self._cuda and self._ev_start is not None:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
        wall = t_post - (self._t_pre if self.section == "optimizer" or last is None else last)
        rec: dict[str, Any] = {
            "type": "step", "time_unix_s": time.time(), "step": n, "wall_s": max(0.0, wall), "device_s": None,
        }
        if self.replica_group is not None:
            rec["replica_group"] = self.replica_group
        if len(_seeded) != self._rng_seeded:  # `_seeded` only grows
            self._rng_seeded = len(_seeded)
            self._rng_capturers = _rng_capturers(g for g in self.rng_names if g in _seeded)
        if self._rng_capturers:
            raw = rec["_rng"] = []  # raw states, hashed on the sender thread
            for name, capture in self._rng_capturers:
                raw.append((name, capture()))
        if _seed_total != self._seed_index:  # an int read under the GIL: no lock on the usual path
            calls, self._seed_index = _seed_calls_since(self._seed_index)
            if calls:
                rec["seed_calls"] = calls[-_MAX_SEED_CALLS:]
        if host:
            previous = self._make_pending(rec)
            if previous is not None:
                self._sender.put(previous)
            # Last: it ends with the pass over the weights, after which everything else would be
            # read from main memory again. The record is queued at the next step, not before.
            try:
                rec["_dev"] = self._measure_host(optimizer, n, rec)
            except BaseException:
                self._drop_pending(rec)
                raise
            return
        rec["_dev"] = self._measure(optimizer, n)
        previous = self._make_pending(rec)
        if end is not None:
            import torch

            done = torch.cuda.Event()
            done.record()
            self._device_wait.append((rec, self._ev_start, end, done))
            self._ev_start = None
        if self._device_wait:
            if previous is not None:
                self._queue_when_ready(previous)
            self._finalise(sync=False)
        elif previous is not None:
            self._sender.put(previous)

    def _measure_host(self, optimizer: Any, n: int, rec: dict) -> dict[str, Any]:
        """The host path's `_measure`: a copy of the optimizer state the update check needs (one
        native call, made first: the optimizer has just used those objects, which the pass over
        the weights would push out of the caches), then one native call for the word sums, this
        step's slice for the positional hash and the chunk's windows after the step, all in one
        `bytes` (from 1 MiB up, that call hands the parameters' part to the worker thread and
        `_join` takes its result). Arithmetic and hashing wait for `_finish`."""
        tr = self._tracked
        tensors = tr.tensors() if tr.buffers else tr.params
        if not tr.unmoved(tensors):
            tr.refresh(tensors, list(map(tr._data_ptr, tensors)))
        out: dict[str, Any] = {"n8": 8 * len(tensors)}
        chunk, self._chunk = self._chunk, None
        plan = None
        if chunk is not None:
            if chunk.host:
                before, self._before = self._before, None
                if before is not None and self._before_gen == tr.gen and tr.window_ok[chunk.number]:
                    out["check"] = (chunk, before, self._reference_host(optimizer, chunk))
                    plan = chunk.plan
            else:  # a dtype NumPy cannot hold: the torch arithmetic, on the CPU
                self._check_device(optimizer, chunk, out)
        summer = tr.summer
        if self.full_every > 0:
            part = out["part"] = (n // self.every) % self.full_every
            out["segments"] = tr.segments[part]
            out["after_at"] = out["n8"] + tr.roll_bytes[part]
            plans: tuple[int, ...] = (part,) if plan is None else (part, plan)
        else:
            out["after_at"] = out["n8"]
            plans = () if plan is None else (plan,)
        if tr.overlap and tr.ptrs is not None:
            # The worker makes the pass over the parameters after this hook returns, while the
            # loop goes on (zero_grad, data, forward, backward leave them alone); `_join`, at the
            # next pre-hook, takes its result before the optimizer writes them again. The
            # windows after the step are copied now: Δθ is the step's own update, whatever
            # runs before the next one.
            versions = sum(map(_version, tr.params))  # before the post: see `_join`
            if plan is not None:
                out["after"] = summer.copy(plan)
                plans = plans[:-1]
            summer.post(*plans)
            self._inflight = (summer, out, rec, versions)
        else:
            out["data"] = summer.sums(*plans)
        return out

    def _measure(self, optimizer: Any, n: int) -> dict[str, Any]:
        """What must be read at this step, as device tensors (no host sync): the parameter word
        sums (and this step's slice for the positional hash), Δθ on the windows and the Gram
        matrix of (Δθ, predicted update) there. Hashing waits for `_finish`."""
        import torch

        part = (n // self.every) % self.full_every if self.full_every > 0 else None
        out: dict[str, Any] = {"part": part, "sums": self._param_sums_device(part)}
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            self._check_device(optimizer, chunk, out)
        if self._cuda:
            for k in ("sums", "upd", "gram"):
                x = out.get(k)
                if isinstance(x, torch.Tensor) and x.is_cuda:
                    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                    host.copy_(x, non_blocking=True)
                    out[k] = host
        return out

    def _check_device(self, optimizer: Any, chunk: _Bucket, out: dict[str, Any]) -> None:
        """Δθ on the chunk's windows and the Gram matrix of (Δθ, predicted update), with torch."""
        import torch

        before, chunk.before = chunk.before, None
        after = chunk.param_views.cat(chunk.params) if before is not None else None
        if after is None or after.shape != before.shape:
            return
        reference = self._reference(optimizer, chunk, before)
        delta = after - before  # in the parameters' dtype: the update fingerprint's bytes
        out["upd"] = delta
        if reference is not None:
            rows = torch.stack([chunk.f32(delta), reference()])
            out["gram"] = rows @ rows.T  # [[Δθ·Δθ, Δθ·u], [u·Δθ, u·u]]

    def _param_sums_device(self, part: Optional[int]) -> Any:
        """The same sums as int64 tensors on the device (stacked), then this step's slice as the
        two position-weighted lanes: nothing but these integers is copied to the host."""
        import torch

        tr = self._tracked
        tensors = tr.tensors()
        tr.refresh(tensors)
        dev = next((t.device for t in tensors if t.numel()), None)
        if dev is None:
            return []
        sums = [
            (w.sum() if w.dtype == torch.int64 else w.sum(dtype=w.dtype)).to(device=dev, dtype=torch.int64)
            for w in tr.words
        ]
        if part is not None:
            offsets = [0]
            for size in tr.sizes:
                offsets.append(offsets[-1] + size)
            for i, lo, hi in _slice_ranges(tr.sizes, part, self.full_every):
                flat = tensors[i].detach().reshape(-1)[lo:hi]
                pos = torch.arange(lo + offsets[i], hi + offsets[i], device=flat.device)
                sums.extend(fingerprint_lanes(flat, pos).to(dev).unbind())
        return torch.stack(sums)

    def _reference(self, optimizer: Any, b: _Bucket, before: Any) -> Optional[Callable[[], Any]]:
        """Read now what the optimizer's own state says the update at the chunk's windows is, and
        return the arithmetic as a function; None when there is no exact reference this step."""
        import torch

        if self._kind is None:
            return None
        params = b.params
        if any(p.grad is None for p in params):
            return None  # some parameters were skipped this step: no exact reference
        states = b.states(optimizer)
        group = dict(b.group)  # a learning-rate schedule changes the live one before `_finish`
        f32 = b.f32
        if self._kind == "sgd":
            buf = None
            if group.get("momentum", 0.0):
                buf = b.gather_state(states, "momentum_buffer")
                if buf is None:
                    return None
                if not group.get("nesterov", False):  # the buffer is the direction
                    return lambda: f32(buf) * -_scalar(group["lr"])
            grad = b.gather_fresh([p.grad for p in params])
            return lambda: _expected_sgd(group, None if buf is None else f32(buf), f32(before), f32(grad))
        vkey = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        m = b.gather_state(states, "exp_avg")
        v = b.gather_state(states, vkey)
        steps = [st.get("step") for st in states]
        if m is None or v is None or any(x is None for x in steps):
            return None
        vals: Optional[list[float]] = None
        if all(isinstance(t, torch.Tensor) for t in steps):
            counts = b.step_views.cat(steps)  # one value per parameter, a copy
            if counts.device.type == "cpu":
                vals = counts.tolist()
            else:  # capturable / fused: the counts live on the device; never sync on them
                step: Any = counts.to(dtype=torch.float32).repeat_interleave(b.counts)
        else:  # plain numbers (older optimizers)
            vals = [float(x) for x in steps]
        if vals is not None:
            if min(vals) == max(vals):
                step = float(vals[0])
            else:  # a parameter skipped earlier steps: per-element bias corrections
                step = torch.tensor(vals, dtype=torch.float32, device=m.device).repeat_interleave(b.counts)
        decoupled = self._kind == "adamw"
        return lambda: _expected_adam(torch, group, f32(m), f32(v), step, f32(before), decoupled)

    def _reference_host(self, optimizer: Any, b: _HostBucket) -> Optional[tuple]:
        """`_reference` on the host path: copies, taken now, of what the reference needs (the
        optimizer state by one native call, the settings of the parameter group, which a schedule
        changes before `_finish` runs); `_expected_host` does the arithmetic on the sender thread."""
        kind = self._kind
        if kind is None or any(map(_is, map(_grad, b.params), _NONES)):
            return None  # some parameters were skipped this step: no exact reference
        live = b.group
        if kind == "sgd":
            group = dict(live)
            buf = None
            if group.get("momentum", 0.0):
                got = b.state_copy(optimizer, ("momentum_buffer",))
                if got is None:
                    return None
                buf = b.unpack(*got)["momentum_buffer"]
                if not group.get("nesterov", False):  # the buffer is the direction
                    return ("sgd", group, buf, None)
            grad = b.np.concatenate([
                p.grad.detach().reshape(-1).numpy()[lo:hi] for p, (lo, hi) in zip(b.params, b.spans)
            ])
            return ("sgd", group, buf, grad)
        keys = _ADAM_STATE[live.get("amsgrad", False)]
        cached = b._state  # `state_copy`'s usual case, inline
        table = optimizer.state
        got = None
        if (cached is not None and cached[3] is not None and cached[0] is table and cached[1] == len(table)
                and cached[2] is keys):
            data = cached[3].copy()
            if data is not None:
                got = (data, cached[4])
        if got is None:
            got = b.state_copy(optimizer, keys)
            if got is None:
                return None
        group = {"lr": live["lr"], "betas": live["betas"], "eps": live["eps"],
                 "weight_decay": live.get("weight_decay")}
        return (kind, group, got, keys[1])

    @staticmethod
    def _expected_host(b: _HostBucket, reference: tuple, before: Any) -> Any:
        """The update the optimizer's state predicts at the chunk's windows, from the copies
        `_reference_host` took; `before` is the parameters' windows as float32."""
        kind, group = reference[0], reference[1]
        f32 = b.f32
        if kind == "sgd":
            buf, grad = reference[2], reference[3]
            if grad is None:  # momentum without nesterov: the buffer is the direction
                return f32(buf) * -_scalar(group["lr"])
            return _expected_sgd(group, None if buf is None else f32(buf), before, f32(grad))
        np = b.np
        got, vkey = reference[2], reference[3]
        state = b.unpack(*got)
        steps = state["step"]
        if steps.min() == steps.max():
            step: Any = float(steps[0])
        else:  # a parameter skipped earlier steps: per-element bias corrections
            step = np.repeat(steps.astype(np.float32), b.counts)
        return _expected_adam(np, group, f32(state["exp_avg"]), f32(state[vkey]), step, before, kind == "adamw")

    # -- finalising records ----------------------------------------------------------------
    def _make_pending(self, rec: dict) -> dict | None:
        """Makes `rec` the step record `log()` attaches to, with a loss logged ahead of it, and
        returns the record it replaces (to queue)."""
        with self._lock:
            previous, self._pending = self._pending, rec
            if self._loss_next is not None:
                rec["_loss"] = self._loss_next
                self._loss_next = None
        return previous

    def _queue_when_ready(self, rec: dict) -> None:
        if any(w[0] is rec for w in self._device_wait):
            rec["_ready"] = True  # sent once its CUDA events complete
            return
        self._sender.put(rec)

    def _finalise(self, sync: bool) -> None:
        """Queue device-timed records whose events completed; on `sync`, everything pending."""
        if sync:
            self._join()
            with self._lock:
                rec, self._pending = self._pending, None
            if rec is not None:
                rec["_ready"] = True
                if not any(w[0] is rec for w in self._device_wait):
                    self._sender.put(rec)
        keep = []
        for rec, start, end, done in self._device_wait:
            if sync:
                done.synchronize()
            if done.query():
                rec["device_s"] = start.elapsed_time(end) / 1000.0
                if rec.get("_ready"):
                    self._sender.put(rec)
                    continue
                rec["_timed"] = True
                continue
            keep.append((rec, start, end, done))
        self._device_wait = keep

    def _finish(self, rec: dict) -> dict:
        """Turn a step record into a wire event: hashes, the update check, the loss. Runs on the
        sender thread, once the record's device values have reached the host."""
        dev = rec.pop("_dev", {})
        loss = rec.pop("_loss", None)
        raw_rng = rec.pop("_rng", None)
        rec.pop("_ready", None)
        rec.pop("_timed", None)
        data = dev.get("data")
        if data is not None:  # the host path: one `bytes` (see `_measure_host`)
            view, n8 = memoryview(data), dev["n8"]
            h = hashlib.blake2b(view[:n8], digest_size=16)  # the word sums, 8 bytes per tensor
            if "part" in dev:
                r = hashlib.sha256(int(dev["part"]).to_bytes(8, "little"))
                roll = view[n8:]
                for i, lo, offset, size in dev["segments"]:
                    r.update(i.to_bytes(8, "little") + lo.to_bytes(8, "little"))
                    r.update(roll[offset:offset + size])
                h.update(r.digest())
            rec["param_fingerprint"] = h.hexdigest()
            check = dev.get("check")
            if check is not None:  # the update check, from the copies taken at the step
                chunk, before, reference = check
                np = chunk.np
                before = np.frombuffer(before, chunk.dtype)
                if "after" in dev:  # copied apart from the pass (see `_measure_host`)
                    after = np.frombuffer(dev["after"], chunk.dtype, chunk.window)
                else:
                    after = np.frombuffer(data, chunk.dtype, chunk.window, dev["after_at"])
                dev["upd"] = delta = after - before  # in the parameters' dtype
                if reference is not None:
                    a, u = chunk.f32(delta), self._expected_host(chunk, reference, chunk.f32(before))
                    dev["gram"] = (np.dot(a, a), np.dot(a, u), np.dot(u, u))
        sums = dev.get("sums")
        if sums is not None:  # the device path: int64 sums (and the slice's lanes); [] if empty
            h = hashlib.blake2b(digest_size=16)
            if not isinstance(sums, list):
                h.update(sums.numpy().tobytes())
            rec["param_fingerprint"] = h.hexdigest()
        upd = dev.get("upd")
        if upd is not None:
            import torch

            if isinstance(upd, torch.Tensor):
                upd = upd.contiguous().view(-1).view(torch.uint8).numpy()
            rec["update_fingerprint"] = _h(upd.tobytes())
        if "gram" in dev:
            gram = dev["gram"]
            if isinstance(gram, tuple):
                aa, ae, ee = (float(x) for x in gram)
            else:
                (aa, ae), (_, ee) = gram.tolist()
            na, ne = math.sqrt(max(aa, 0.0)), math.sqrt(max(ee, 0.0))
            cos = ae / (na * ne) if na > 0 and ne > 0 else None
            if cos is not None and math.isfinite(ae):
                rec["update"] = {
                    "dot": ae,
                    "cosine": max(-1.0, min(1.0, cos)),
                    "update_norm": _finite_or_str(na),
                    "expected_norm": _finite_or_str(ne),
                }
        rng = {name: _rng_digest(name, raw) for name, raw in raw_rng or () if raw is not None}
        if rng:
            rec["rng"] = rng
        if loss is not None:
            rec["loss"] = _finite_or_str(_scalar(loss))
        return self._event(rec)


def watch(
    model: Any,
    optimizer: Any,
    run: Optional[str] = None,
    collector: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    token: Optional[str] = None,
    every: int = 1,
    spool: Optional[os.PathLike | str] = None,
    *,
    seed: Optional[int] = None,
    heartbeat_s: float = 5.0,
    sample: int = 4096,
    full_every: int = 50,
    section: str = "optimizer",
    replica_group: Optional[str] = None,
    rng: Iterable[str] = _RNG_NAMES,
    flush_s: float = 0.5,
    sample_seed: Optional[int] = None,
    sync: bool = True,
    overlap: bool = True,
) -> Watch:
    """Watch `optimizer`'s steps and report them to the collector; returns the handle.

    `run`, `collector` and `token` default to ``TRAINGUARD_RUN``, ``TRAINGUARD_COLLECTOR``
    (else ``http://127.0.0.1:7411``) and ``TRAINGUARD_TOKEN``; without a token the run is
    registered. Under an initialised ``torch.distributed`` job (and ``sync=True``) rank 0 registers
    the run and sends its start first, then broadcasts the token, so every rank shares one run and
    rank 0's base seed is the run's. `seed` is the run's base seed (default: the last
    ``torch.manual_seed`` before this call); pass it when ranks seed with per-rank offsets, and
    leave out of `rng` the generators that legitimately differ between replicas. `sample` is the
    number of elements the update check reads per step (from at most 16 parameter tensors, in
    rotation); `full_every` the number of steps over which the positional hash covers every
    parameter once (0 turns it off; the per-step word sums always cover every element).
    `overlap` (from 1 MiB of weights, on the CPU) lets the pass over the parameters run on a
    worker thread after the step, while the loop goes on; turn it off (on every replica) when the
    loop writes parameters between steps in a way torch does not count, through ``.data`` or
    NumPy (``p.data.clamp_()`` weight clipping): such a write races with the pass and shows as
    replica divergence. Writes under ``torch.no_grad()`` are counted and safe either way.
    """
    if not hasattr(optimizer, "register_step_post_hook"):
        raise WatchError("the optimizer has no step hooks (torch >= 2.0 is required)")
    _install_seed_hooks()
    run = run or os.environ.get("TRAINGUARD_RUN")
    if not run:
        raise WatchError("no run id: pass run= or set TRAINGUARD_RUN")
    if not _RUN_ID.fullmatch(run):
        raise WatchError(f"run id {run!r} is not 1 to 128 of [A-Za-z0-9._-], not starting with a dot")
    collector = collector or os.environ.get("TRAINGUARD_COLLECTOR") or "http://127.0.0.1:7411"
    token = token or os.environ.get("TRAINGUARD_TOKEN") or None
    if every < 1:
        raise WatchError("every must be at least 1")
    if section not in ("optimizer", "interval"):
        raise WatchError("section must be 'optimizer' or 'interval'")
    unknown = set(rng) - set(_RNG_NAMES)
    if unknown:
        raise WatchError(f"unknown generators {sorted(unknown)}; known: {list(_RNG_NAMES)}")
    rank, world_size = _identity(rank, world_size)
    spool_path = Path(spool) if spool is not None else _default_spool(run, rank)
    if sample_seed is None:
        sample_seed = int.from_bytes(hashlib.sha256(run.encode()).digest()[:8], "little") >> 1

    dist = None
    try:
        import torch.distributed as _dist

        if sync and world_size > 1 and _dist.is_available() and _dist.is_initialized():
            dist = _dist
    except ImportError:
        pass

    if token is None and (dist is None or rank == 0):
        try:
            _, token = register_run(collector, run, timeout=5.0)
        except _HttpError as e:
            if e.status == 409:
                raise WatchError(
                    f"run {run} is already registered; pass its token (token= or TRAINGUARD_TOKEN)"
                ) from None
            raise WatchError(f"cannot register run {run} with {collector}: {e}") from None
        except (OSError, ValueError) as e:
            if dist is not None:
                log.warning("trainguard.watch: cannot register run %s (%s); other ranks cannot send", run, e)
            # Single process: the sender registers once the collector answers.
    w = Watch(
        model, optimizer, run=run, collector=collector, rank=rank, world_size=world_size,
        token=token, every=every, spool=spool_path, seed=seed, heartbeat_s=heartbeat_s,
        sample=sample, full_every=full_every, section=section, replica_group=replica_group,
        rng=rng, flush_s=flush_s, sample_seed=sample_seed, overlap=overlap,
    )
    if dist is None:
        w._start()
        w._run_threads()
        return w

    def send_first(event: dict) -> None:
        # Rank 0's start is delivered before any other rank's (the run's base seed is rank 0's).
        if rank == 0:
            if not w._sender._send([event]):
                w._sender._append_spool([event])
        else:
            w._sender.put(event)

    w._start(send_first)
    box = [w._sender.token]
    dist.broadcast_object_list(box, src=0)
    if w._sender.token is None:
        w._sender.token = box[0]
    w._run_threads()
    return w
