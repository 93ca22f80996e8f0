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
  correction and decoupled decay), on a fixed random sample of at most ``sample`` elements:
  their dot product, cosine and norms. A healthy step gives cosine ≈ +1, a flipped one ≈ −1.
- fingerprints of the parameters and of the update that data-parallel replicas must share bit
  for bit: each sampled element's bits, viewed as integers, reduced modulo 2^31−1 and summed with
  two position-dependent weights, on the device; only a few int64 scalars reach the host. Every
  ``full_every`` steps the parameter fingerprint covers every element and the model's buffers
  (batch-norm statistics), so a single tampered weight outside the sample is still caught.
- hashes of every RNG state (Python ``random``, NumPy's global generator, ``torch``'s CPU and
  every CUDA generator) and every seeding call (``random.seed``, ``numpy.random.seed``,
  ``torch.manual_seed``, ``torch.cuda.manual_seed(_all)``, wrapped from the moment this module and
  the library are both imported; importing this module does not import torch or NumPy) with the
  caller's file and line. Seeds set through a name bound before that (``from torch import
  manual_seed``) are not seen; the RNG state hashes still are.
- the process identity (host, pid, user, rank, world size).

Step events carry only the generators replicas must agree on: torch's (fixed default seed) and
Python's and NumPy's once a recorded call seeded them (before that they come from OS entropy).
On the CPU the full parameter fingerprint is a BLAKE2b of the bytes instead of the lanes. A step's
record is queued at the next step (or `close()`), so `log(loss=...)` after `optimizer.step()`
attaches to it; on CUDA it waits, without a host sync, until its events and copies completed.
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

import atexit
import collections
import getpass
import hashlib
import importlib.abc
import json
import logging
import math
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

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self._names:
            return None
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


def _h(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def rng_hashes(names: Iterable[str] = _RNG_NAMES) -> dict[str, str]:
    """Hex hashes of the generator states named (those available in this process)."""
    out: dict[str, str] = {}
    names = set(names)
    if "python" in names:
        out["python"] = _h(repr(_random.getstate()).encode())
    if "numpy" in names:
        try:
            import numpy as np

            kind, keys, pos, has_gauss, cached = np.random.get_state()
            out["numpy"] = _h(
                kind.encode() + keys.tobytes() + repr((int(pos), int(has_gauss), float(cached))).encode()
            )
        except ImportError:
            pass
    if "torch_cpu" in names or "torch_cuda" in names:
        try:
            import torch
        except ImportError:
            return out
        if "torch_cpu" in names:
            out["torch_cpu"] = _h(torch.get_rng_state().numpy().tobytes())
        if "torch_cuda" in names and torch.cuda.is_available() and torch.cuda.is_initialized():
            states = torch.cuda.get_rng_state_all()
            out["torch_cuda"] = _h(b"".join(s.numpy().tobytes() for s in states))
    return out


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
    grad + wd·θ; flat float64 tensors in and out."""
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
    return -lr * d


def _expected_adam(group: dict, m: Any, v: Any, step: Any, p_before: Any, decoupled: bool) -> Any:
    """−lr·m̂/(√v̂+ε) (and −lr·wd·θ for AdamW) for torch.optim.Adam/AdamW from the post-step state;
    `step` is a number or a per-element tensor."""
    lr = _scalar(group["lr"])
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    eps = _scalar(group["eps"])
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    u = -(lr / bc1) * m / (v.sqrt() / (bc2 ** 0.5) + eps)
    wd = group.get("weight_decay", 0.0) or 0.0
    if decoupled and wd:
        u = u - lr * wd * p_before
    return u


def _optimizer_kind(optimizer: Any) -> Optional[str]:
    import torch

    # Exact classes: a subclass may change the rule, and a wrong reference is a false alarm.
    kinds = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    return kinds.get(type(optimizer))


class _Sample:
    """A fixed random sample of one parameter's elements (chosen once, the same on every rank)."""

    __slots__ = ("param", "group", "idx", "pos", "offset", "lo", "hi")

    def __init__(self, param: Any, group: dict, idx: Any, offset: int) -> None:
        self.param = param
        self.group = group
        self.idx = idx
        self.pos = idx + offset
        self.offset = offset
        self.lo = self.hi = 0


class _Bucket:
    """The samples of one (device, dtype, param group), gathered into flat buffers each step so
    that the fingerprints and the update check are a few vector operations, not a few per tensor."""

    def __init__(self, samples: list[_Sample]) -> None:
        import torch

        first = samples[0].param
        self.samples = samples
        self.group = samples[0].group
        n = 0
        for s in samples:
            s.lo, s.hi = n, n + s.idx.numel()
            n = s.hi
        self.n = n
        self.counts = torch.tensor([s.hi - s.lo for s in samples], device=first.device)
        self.pos = torch.cat([s.pos for s in samples])
        _, per = _words(torch.empty(1, dtype=first.dtype))
        self.weights = _lane_weights(self.pos, per)
        self.before = torch.empty(n, dtype=first.dtype, device=first.device)
        self.after = torch.empty_like(self.before)
        self.have_before = False

    def gather(self, tensors: list[Any], dtype: Any = None) -> Any:
        """`tensors[i]` (aligned with the samples) at the sampled positions, as one flat tensor."""
        import torch

        out = torch.empty(self.n, dtype=dtype or tensors[0].dtype, device=self.before.device)
        return self.gather_into(tensors, out)

    def gather_into(self, tensors: list[Any], out: Any) -> Any:
        import torch

        for s, t in zip(self.samples, tensors):
            src = t.detach().reshape(-1)
            if src.dtype == out.dtype and src.device == out.device:
                torch.index_select(src, 0, s.idx, out=out[s.lo:s.hi])
            else:
                out[s.lo:s.hi].copy_(src.index_select(0, s.idx))
        return out


def _choose_samples(optimizer: Any, budget: int, seed: int) -> list[_Bucket]:
    import torch

    params: list[tuple[Any, dict]] = []
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            params.append((p, group))
    total = sum(p.numel() for p, _ in params)
    gen = torch.Generator().manual_seed(seed)
    buckets: dict[tuple, list[_Sample]] = {}
    offset = 0
    for p, group in params:
        n = p.numel()
        if n == 0:
            continue
        share = max(1, min(n, (budget * n) // max(1, total)))
        if share >= n:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(n, generator=gen)[:share].sort().values
        key = (str(p.device), p.dtype, id(group))
        buckets.setdefault(key, []).append(_Sample(p, group, idx.to(p.device), offset))
        offset += n
    return [_Bucket(samples) for samples in buckets.values()]


# --------------------------------------------------------------------------------------------
# Transport: queue → batches → collector, spool when it is down
# --------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


def _post(url: str, body: Any, token: Optional[str], timeout: float) -> Any:
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

    def __init__(self, collector: str, run: str, token: Optional[str], spool: Path, flush_s: float) -> None:
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
        with self.cond:
            self.queue.append(event)
            if len(self.queue) >= _MAX_BATCH:
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
                self._deliver(batch)
            except Exception as e:  # never let telemetry kill training; keep the events
                self._note(f"unexpected error, events spooled: {e!r}")
                self._append_spool(batch)
            with self.cond:
                self.in_flight = 0
                self.cond.notify_all()
                if closing and not self.queue:
                    return

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
            _post(self.url, {"events": events}, self.token, timeout=10.0)
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
        self._buckets = _choose_samples(optimizer, sample, sample_seed)
        self._numel = sum(s.param.numel() for b in self._buckets for s in b.samples)
        self._cuda = torch.cuda.is_available() and any(b.before.is_cuda for b in self._buckets)
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
        self._t_pre = 0.0
        self._t_last_post: Optional[float] = None
        self._ev_start: Any = None
        self._pending: Optional[dict] = None  # the last step's record, until finalised
        # (record, start, end, done) on CUDA: end closes the timed section, done follows the
        # copies of the step's scalars to the host; a record is read once done has completed.
        self._device_wait: list[tuple[dict, Any, Any, Any]] = []
        self._loss_next: Any = None
        self._seed_index = 0
        self._closed = False
        self._lock = threading.Lock()
        self._sender = _Sender(collector, run, token, spool, flush_s)
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
        value = loss.detach() if hasattr(loss, "detach") else loss
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
    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        n = self._step + 1
        self._measuring = n % self.every == 0
        if self._measuring:
            with torch.no_grad():
                for b in self._buckets:
                    b.gather_into([s.param for s in b.samples], b.before)
                    b.have_before = True
            if self._cuda:
                self._ev_start = torch.cuda.Event(enable_timing=True)
                self._ev_start.record()
        self._t_pre = time.perf_counter()

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        t_post = time.perf_counter()
        self._step += 1
        n = self._step
        interval = None if self._t_last_post is None else t_post - self._t_last_post
        self._t_last_post = t_post
        if not self._measuring:
            return
        end = None
        if self._cuda and self._ev_start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        wall = t_post - self._t_pre if self.section == "optimizer" else (interval or t_post - self._t_pre)
        with torch.no_grad():
            dev = self._measure(optimizer, n)
        rec: dict[str, Any] = {"type": "step", "step": n, "wall_s": max(0.0, wall), "device_s": None}
        if self.replica_group is not None:
            rec["replica_group"] = self.replica_group
        rng = rng_hashes(g for g in self.rng_names if g in _seeded)
        if rng:
            rec["rng"] = rng
        calls, self._seed_index = _seed_calls_since(self._seed_index)
        if calls:
            rec["seed_calls"] = calls[-_MAX_SEED_CALLS:]
        rec["_dev"] = dev
        with self._lock:
            previous = self._pending
            self._pending = rec
            if self._loss_next is not None:
                rec["_loss"] = self._loss_next
                self._loss_next = None
        if end is not None:
            done = torch.cuda.Event()
            done.record()
            self._device_wait.append((rec, self._ev_start, end, done))
            self._ev_start = None
        if previous is not None:
            self._queue_when_ready(previous)
        self._finalise(sync=False)

    def _measure(self, optimizer: Any, n: int) -> dict[str, Any]:
        """Device tensors for the update check and fingerprints of this step (no host sync)."""
        import torch

        applied, expected, upd_lanes, param_lanes = [], [], [], []
        full = self.full_every > 0 and n % self.full_every == 0
        out: dict[str, Any] = {"full": full}
        if full and not self._cuda:
            # On the CPU a byte hash of every parameter is far cheaper than the integer lanes
            # (on a GPU the lanes run at memory bandwidth and nothing but two scalars moves).
            h = hashlib.blake2b(digest_size=16)
            for t in [s.param for b in self._buckets for s in b.samples] + self._buffers():
                w, _ = _words(t.detach().contiguous().reshape(-1))
                h.update(memoryview(w.numpy()))
            out["param_hex"] = h.hexdigest()
        for b in self._buckets:
            if not b.have_before:
                continue
            b.have_before = False
            b.gather_into([s.param for s in b.samples], b.after)
            delta = b.after - b.before
            upd_lanes.append(_fold(delta, b.weights))
            if "param_hex" in out:
                pass
            elif full:
                for s in b.samples:
                    flat = s.param.detach().reshape(-1)
                    pos = torch.arange(flat.numel(), device=flat.device) + s.offset
                    param_lanes.append(fingerprint_lanes(flat, pos))
            else:
                param_lanes.append(_fold(b.after, b.weights))
            exp = self._expected(optimizer, b)
            if exp is not None:
                applied.append(delta.double())
                expected.append(exp)
        if full and "param_hex" not in out and param_lanes:
            offset = self._numel
            for buf in self._buffers():
                flat = buf.detach().reshape(-1)
                pos = torch.arange(flat.numel(), device=flat.device) + offset
                param_lanes.append(fingerprint_lanes(flat, pos).to(param_lanes[0].device))
                offset += flat.numel()
        if upd_lanes:
            lanes = torch.remainder(torch.stack(upd_lanes).sum(0), _P)
            if param_lanes:
                lanes = torch.cat([torch.remainder(torch.stack(param_lanes).sum(0), _P), lanes])
            out["fp"] = lanes
        if applied:
            a = torch.cat(applied) if len(applied) > 1 else applied[0]
            e = torch.cat(expected) if len(expected) > 1 else expected[0]
            out["upd"] = torch.stack([(a * e).sum(), a.norm(), e.norm()])
        if self._cuda:
            for k in ("fp", "upd"):
                if k in out and out[k].is_cuda:
                    host = torch.empty(out[k].shape, dtype=out[k].dtype, pin_memory=True)
                    host.copy_(out[k], non_blocking=True)
                    out[k] = host
        return out

    def _buffers(self) -> list[Any]:
        """The model's buffers (batch-norm statistics, ...): replicas must agree on them too."""
        buffers = getattr(self.model, "buffers", None)
        return [b for b in buffers() if b.numel()] if callable(buffers) else []

    def _expected(self, optimizer: Any, b: _Bucket) -> Optional[Any]:
        """The update the optimizer's state predicts at the bucket's samples (float64), or None."""
        import torch

        if self._kind is None:
            return None
        params = [s.param for s in b.samples]
        if any(p.grad is None for p in params):
            return None  # some parameters were skipped this step: no exact reference
        states = [optimizer.state.get(p) or {} for p in params]
        before = b.before.double()
        group = b.group
        if self._kind == "sgd":
            grad = b.gather([p.grad for p in params]).double()
            buf = None
            if group.get("momentum", 0.0):
                bufs = [st.get("momentum_buffer") for st in states]
                if any(not isinstance(x, torch.Tensor) for x in bufs):
                    return None
                buf = b.gather(bufs).double()
            return _expected_sgd(group, buf, before, grad)
        vkey = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        ms = [st.get("exp_avg") for st in states]
        vs = [st.get(vkey) for st in states]
        steps = [st.get("step") for st in states]
        if any(not isinstance(x, torch.Tensor) for x in ms + vs) or any(x is None for x in steps):
            return None
        m = b.gather(ms).double()
        v = b.gather(vs).double()
        if all(not isinstance(t, torch.Tensor) or not t.is_cuda for t in steps):
            vals = [float(t) for t in steps]
            if all(x == vals[0] for x in vals):
                step: Any = vals[0]
            else:
                step = torch.tensor(vals, dtype=torch.float64, device=m.device).repeat_interleave(b.counts)
        else:  # capturable / fused: the counts live on the device; never sync on them
            step = torch.stack(
                [torch.as_tensor(t).to(device=m.device, dtype=torch.float64).reshape(()) for t in steps]
            ).repeat_interleave(b.counts)
        return _expected_adam(group, m, v, step, before, decoupled=self._kind == "adamw")

    # -- finalising records ----------------------------------------------------------------
    def _queue_when_ready(self, rec: dict) -> None:
        if any(w[0] is rec for w in self._device_wait):
            rec["_ready"] = True  # sent once its CUDA events complete
            return
        self._sender.put(self._finish(rec))

    def _finalise(self, sync: bool) -> None:
        """Queue device-timed records whose events completed; on `sync`, everything pending."""
        if sync:
            with self._lock:
                rec, self._pending = self._pending, None
            if rec is not None:
                rec["_ready"] = True
                if not any(w[0] is rec for w in self._device_wait):
                    self._sender.put(self._finish(rec))
        keep = []
        for rec, start, end, done in self._device_wait:
            if sync:
                done.synchronize()
            if done.query():
                rec["device_s"] = start.elapsed_time(end) / 1000.0
                if rec.get("_ready"):
                    self._sender.put(self._finish(rec))
                    continue
                rec["_timed"] = True
                continue
            keep.append((rec, start, end, done))
        self._device_wait = keep

    def _finish(self, rec: dict) -> dict:
        """Turn a step record into a wire event (its device values are available by now)."""
        dev = rec.pop("_dev", {})
        loss = rec.pop("_loss", None)
        rec.pop("_ready", None)
        rec.pop("_timed", None)
        if "fp" in dev:
            v = [int(x) for x in dev["fp"].tolist()]
            k = len(_LANES)
            rec["param_fingerprint"] = dev.get("param_hex") or _lanes_hex(v[:k])
            rec["update_fingerprint"] = _lanes_hex(v[-k:])
        if "upd" in dev:
            dot, na, ne = (float(x) for x in dev["upd"].tolist())
            cos = dot / (na * ne) if na > 0 and ne > 0 else None
            if cos is not None and math.isfinite(dot):
                rec["update"] = {
                    "dot": dot,
                    "cosine": max(-1.0, min(1.0, cos)),
                    "update_norm": _finite_or_str(na),
                    "expected_norm": _finite_or_str(ne),
                }
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
) -> Watch:
    """Watch `optimizer`'s steps and report them to the collector; returns the handle.

    `run`, `collector` and `token` default to ``TRAINGUARD_RUN``, ``TRAINGUARD_COLLECTOR``
    (else ``http://127.0.0.1:7411``) and ``TRAINGUARD_TOKEN``; without a token the run is
    registered. Under an initialised ``torch.distributed`` job (and ``sync=True``) rank 0 registers
    the run and sends its start first, then broadcasts the token, so every rank shares one run and
    rank 0's base seed is the run's. `seed` is the run's base seed (default: the last
    ``torch.manual_seed`` before this call); pass it when ranks seed with per-rank offsets, and
    leave out of `rng` the generators that legitimately differ between replicas.
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
        rng=rng, flush_s=flush_s, sample_seed=sample_seed,
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
