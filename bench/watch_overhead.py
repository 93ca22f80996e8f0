#!/usr/bin/env python3
"""Step-time overhead of trainguard.watch on CPU training loops, with and without it, in one run.

    .venv/bin/python bench/watch_overhead.py                      # both loops, CPU, 1 torch thread
    .venv/bin/python bench/watch_overhead.py --loops transformer  # only the judged loop
    .venv/bin/python bench/watch_overhead.py --device cuda        # the same on a GPU

Loops:
  transformer  the benchmark loop the issue's "at most 1% of step time" is judged on: a 4-layer
               pre-norm transformer language model (d=192, 4 heads, FFN 768, vocabulary 1024,
               2.2 M parameters in 54 tensors), 4 sequences of 64 tokens, AdamW; ~60 ms of CPU
               per step on one core. Small, but shaped like the jobs watch is for (dozens of
               tensors, compute per step well above one pass over the weights).
  mlp          the earlier microbenchmark: a 3-layer MLP (134 k parameters in 6 tensors), batch 64,
               AdamW, ~2 ms per step. What watch does per step has a fixed cost of tens to
               hundreds of µs, so this loop shows that floor; it is not what the target is judged on.

Arms: independent copies of the same loop (same seed, same data), stepped in turn, one step each
per round (plain, watch, plain/2, watch/10, plain, ...), so that load on a shared machine hits
every arm alike, step by step:
  plain     the loop alone
  watch     trainguard.watch(every=1): timing, update check, full fingerprints, RNG hashes, every step
  plain/2   the loop alone again: its ratio to `plain` is the noise floor of this run
  watch/10  trainguard.watch(every=10)

Per arm the table gives medians over steps of: wall ms per step, and CPU ms per step of the
training thread (`time.thread_time`, which other processes on the machine do not inflate); the
training thread's CPU inside watch's hooks and `log()` (`thread_time_ns` around them) per step and
as a percentage of the plain step; and the CPU of watch's sender thread per step (hashing, JSON,
HTTP; it runs beside the loop). Ratios are against `plain`. Every arm reports to a real collector
(`trainguard watch serve` on a free loopback port with a temporary database) when the binary is
built (TRAINGUARD=path, else target/release or target/debug), otherwise to a closed port (events
are spooled to a temporary file). `--json PATH` writes every number. Needs torch.

watch.py is loaded from this source tree; the native module it reads CPU tensors with comes from
the installed package, which must be a release build (scripts/test-python installs a debug one;
this script says so when it finds one). From the repository root, with .venv/bin on PATH:

    .venv/bin/python -m pip install --no-build-isolation --no-deps --force-reinstall ./python
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.01
JUDGED = "transformer"


def load_watch():
    spec = importlib.util.spec_from_file_location("trainguard_watch", REPO / "python" / "trainguard" / "watch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tw = load_watch()
import torch  # noqa: E402

# CPU time the training thread spends inside watch: the hooks and log() of this module's copy are
# wrapped (thread CPU time, so that other processes on the machine do not inflate it).
_inside_ns = [0]


def _timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            _inside_ns[0] += time.thread_time_ns() - t0

    return wrapper


for _name in ("_pre_hook", "_post_hook", "log"):
    setattr(tw.Watch, _name, _timed(getattr(tw.Watch, _name)))


def find_binary() -> Path | None:
    env = os.environ.get("TRAINGUARD")
    built = [REPO / "target" / profile / "trainguard" for profile in ("release", "debug")]
    candidates = [Path(env)] if env else built
    return next((c for c in candidates if c.exists()), None)


def start_collector(tmp: Path):
    binary = find_binary()
    if binary is None:
        return None, None
    proc = subprocess.Popen(
        [str(binary), "watch", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp / "bench.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    m = re.search(r"listening on (http://\S+)", proc.stderr.readline())
    if not m:
        proc.kill()
        return None, None
    return proc, m.group(1)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ffn: int, seq: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        layer = torch.nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x):
        h = self.blocks(self.emb(x) + self.pos, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def make_loop(name: str, device: str):
    """(model, optimizer, step function, description) for one loop, freshly seeded."""
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(1)
    if name == "mlp":
        width, batch = 256, 64
        model = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, 10),
        ).to(device)
        xs = torch.randn(16, batch, width, device=device, generator=gen)
        ys = torch.randint(0, 10, (16, batch), device=device, generator=gen)

        def forward(i):
            return torch.nn.functional.cross_entropy(model(xs[i % 16]), ys[i % 16])

        what = f"MLP, batch {batch}"
    else:
        vocab, seq, batch = 1024, 64, 4
        model = TinyLM(vocab, d=192, layers=4, heads=4, ffn=768, seq=seq).to(device)
        tokens = torch.randint(0, vocab, (16, batch, seq + 1), device=device, generator=gen)

        def forward(i):
            t = tokens[i % 16]
            return torch.nn.functional.cross_entropy(model(t[:, :-1]).reshape(-1, vocab), t[:, 1:].reshape(-1))

        what = f"transformer LM, {batch}x{seq} tokens"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    params = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    return model, opt, forward, f"{what}, {params / 1e6:.2f} M parameters in {tensors} tensors, AdamW"


def native_build() -> str:
    """"release", "debug" or "missing": the installed native module that watch.py reads CPU
    tensors with."""
    try:
        import trainguard._native as native
    except ImportError:
        return "missing"
    return "debug" if getattr(native, "debug_build", True) else "release"


def thread_cpu_s(thread) -> float:
    """CPU seconds used so far by another thread of this process (Linux), 0.0 when unknown."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError, TypeError):
        return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", default="transformer,mlp", help="comma-separated: transformer, mlp")
    ap.add_argument("--steps", type=int, default=0, help="measured steps per arm (default: 150 transformer, 2000 mlp)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loops = [x for x in args.loops.split(",") if x]
    arms = {"plain": None, "watch": 1, "plain/2": None, "watch/10": 10}
    result: dict[str, dict] = {}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None

    native = args.native = native_build()
    if native != "release":
        print(f"warning: trainguard._native is {native}: these are not the numbers of a release build",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as d:
        tmp = Path(d)
        proc, url = start_collector(tmp)
        sink = "collector" if url else "spool (no collector binary)"
        url = url or closed_port_url()
        try:
            for loop_name in loops:
                steps = args.steps or (150 if loop_name == "transformer" else 2000)
                result[loop_name] = run_loop(loop_name, arms, steps, args, url, proc is not None, tmp, sink)
        finally:
            if proc:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    if load is not None:
        end = os.getloadavg()
        print(f"\nload average at start {load[0]:.1f}, at end {end[0]:.1f}, on {os.cpu_count()} CPUs "
              "(under load, read the thread CPU columns rather than wall)")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "threads": args.threads, "load_average": load,
                                         "native": native, "loops": result}, indent=2))
    return 0


def run_loop(name: str, arms: dict, steps: int, args, url: str, live: bool, tmp: Path, sink: str) -> dict:
    device = args.device
    setups = {}
    desc = ""
    for arm, every in arms.items():
        model, opt, forward, desc = make_loop(name, device)
        w = None
        if every is not None:
            w = tw.watch(model, opt, run=f"bench-{name}-{arm.replace('/', '-')}", collector=url,
                         token=None if live else "x", every=every, spool=tmp / f"{name}-{every}.jsonl")
        setups[arm] = (model, opt, forward, w)
    samples: dict[str, dict[str, list[float]]] = {a: {"wall": [], "thread_cpu": [], "inside": []} for a in arms}
    sender_cpu0 = {a: thread_cpu_s(s[3]._sender.thread) for a, s in setups.items() if s[3] is not None}
    warmup = 5
    for i in range(warmup + steps):
        for arm, (model, opt, forward, w) in setups.items():
            if device == "cuda":
                torch.cuda.synchronize()
            _inside_ns[0] = 0
            t0, c0 = time.perf_counter(), time.thread_time()
            loss = forward(i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if w is not None:
                w.log(loss=loss)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                s = samples[arm]
                s["wall"].append(time.perf_counter() - t0)
                s["thread_cpu"].append(time.thread_time() - c0)
                s["inside"].append(_inside_ns[0] / 1e9)
    sender = {a: (thread_cpu_s(setups[a][3]._sender.thread) - c) / (warmup + steps) for a, c in sender_cpu0.items()}
    delivered = {a: s[3].close(timeout=10 if live else 0.1) for a, s in setups.items() if s[3] is not None}
    return report(name, desc, samples, sender, steps, args, sink, delivered)


def report(name: str, desc: str, samples: dict, sender: dict, steps: int, args, sink: str, delivered) -> dict:
    med = {arm: {k: statistics.median(v) for k, v in s.items()} for arm, s in samples.items()}
    # The mean of `inside` (not the median): every 10th step of watch/10 is the only one that costs.
    inside = {arm: statistics.fmean(s["inside"]) for arm, s in samples.items()}
    base = med["plain"]
    judged = " (the loop the 1% target is judged on)" if name == JUDGED else " (fixed-cost floor; not judged)"
    print(f"\n{name}{judged}: {desc}")
    print(f"  device {args.device}, {steps} steps per arm, arms stepped in turn, torch threads {args.threads}, "
          f"events to {sink}, native module: {args.native} build")
    print(f"  {'arm':<9} {'wall ms':>9} {'ratio':>6} {'thread CPU ms':>13} {'ratio':>6} "
          f"{'in watch':>9} {'% of step':>9} {'sender CPU':>10}")
    out = {}
    for arm, m in med.items():
        pct = 100 * inside[arm] / base["thread_cpu"]
        snd = f"{1e6 * sender[arm]:>8.0f}µs" if arm in sender else f"{'-':>10}"
        print(f"  {arm:<9} {1e3 * m['wall']:>9.3f} {m['wall'] / base['wall']:>6.3f} {1e3 * m['thread_cpu']:>13.3f} "
              f"{m['thread_cpu'] / base['thread_cpu']:>6.3f} {1e6 * inside[arm]:>7.0f}µs {pct:>8.2f}% {snd}")
        out[arm] = {
            "median_wall_s": m["wall"],
            "median_thread_cpu_s": m["thread_cpu"],
            "ratio_wall": m["wall"] / base["wall"],
            "ratio_thread_cpu": m["thread_cpu"] / base["thread_cpu"],
            "inside_watch_s_per_step": inside[arm],
            "inside_pct_of_step": pct,
            "sender_cpu_s_per_step": sender.get(arm),
            "steps": samples[arm],
        }
    w = out["watch"]
    noise = out["plain/2"]["ratio_thread_cpu"]
    if name == JUDGED:
        met = w["inside_pct_of_step"] <= 100 * (TARGET_RATIO - 1) and w["ratio_thread_cpu"] <= TARGET_RATIO
        print(f"  target: watch (every step) <= {100 * (TARGET_RATIO - 1):.0f}% of step time: "
              f"{'MET' if met else 'NOT MET'} (inside watch {w['inside_pct_of_step']:.2f}% of the step; thread CPU "
              f"ratio {w['ratio_thread_cpu']:.3f} with plain/2 at {noise:.3f}, the noise of this run)")
    if delivered and not all(delivered.values()):
        print(f"  note: some events were not delivered at close: {delivered}")
    return {"description": desc, "steps": steps, "sink": sink, "arms": out}


if __name__ == "__main__":
    sys.exit(main())
