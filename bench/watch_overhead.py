#!/usr/bin/env python3
"""Step-time overhead of trainguard.watch on a small training loop, with and without it, in one run.

    .venv/bin/python bench/watch_overhead.py                # CPU, 200 steps per arm, 5 rounds
    .venv/bin/python bench/watch_overhead.py --device cuda  # the same on a GPU

Arms (interleaved round by round so load drift on a shared machine hits them alike):
  plain     the loop alone
  watch     trainguard.watch(every=1): timing, update check, fingerprints, RNG hashes every step
  watch/10  trainguard.watch(every=10)

Every arm reports to a real collector (`trainguard watch serve` on a free loopback port with a
temporary database) when the binary is built (TRAINGUARD=path or target/debug/trainguard), else to
a closed port (events are spooled to a temporary file, the slow path). The table gives the median
seconds per step over rounds and the ratio to `plain`; `--json PATH` writes the numbers.
Needs torch (requirements-test.txt).
"""

from __future__ import annotations

import argparse
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


def load_watch():
    spec = importlib.util.spec_from_file_location("trainguard_watch", REPO / "python" / "trainguard" / "watch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tw = load_watch()
import torch  # noqa: E402


def start_collector(tmp: Path):
    binary = Path(os.environ.get("TRAINGUARD", REPO / "target" / "debug" / "trainguard"))
    if not binary.exists():
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


def make(device: str, width: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt


def loop(model, opt, steps: int, batch: int, width: int, device: str, w=None) -> float:
    gen = torch.Generator(device=device).manual_seed(1)
    xs = torch.randn(steps, batch, width, device=device, generator=gen)
    ys = torch.randint(0, 10, (steps, batch), device=device, generator=gen)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = torch.nn.functional.cross_entropy(model(xs[i]), ys[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if w is not None:
            w.log(loss=loss)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="tg-bench-") as d:
        tmp = Path(d)
        proc, url = start_collector(tmp)
        sink = "collector" if url else "spool (no collector binary)"
        url = url or closed_port_url()
        arms = {"plain": None, "watch": 1, "watch/10": 10}
        times: dict[str, list[float]] = {a: [] for a in arms}
        delivered = {}
        try:
            for r in range(args.rounds):
                for arm, every in arms.items():
                    model, opt = make(args.device, args.width)
                    loop(model, opt, 5, args.batch, args.width, args.device)  # warm-up
                    if every is None:
                        times[arm].append(loop(model, opt, args.steps, args.batch, args.width, args.device))
                        continue
                    w = tw.watch(model, opt, run=f"bench-{arm.replace('/', '-')}-{r}", collector=url,
                                 token=None if proc else "x", every=every, spool=tmp / f"{r}-{every}.jsonl")
                    times[arm].append(loop(model, opt, args.steps, args.batch, args.width, args.device, w))
                    delivered[arm] = w.close(timeout=10 if proc else 0.1)
        finally:
            if proc:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)

    params = sum(p.numel() for p in make(args.device, args.width)[0].parameters())
    base = statistics.median(times["plain"])
    print(f"device {args.device}, MLP {params} parameters, batch {args.batch}, {args.steps} steps x "
          f"{args.rounds} rounds, torch threads {args.threads}, events to {sink}")
    print(f"{'arm':<10} {'s/step (median)':>16} {'ratio':>7}  {'min..max s/step':>22}")
    result = {}
    for arm, ts in times.items():
        med = statistics.median(ts)
        result[arm] = {"median_s_per_step": med, "ratio": med / base, "all": ts}
        print(f"{arm:<10} {med:>16.6f} {med / base:>7.3f}  {min(ts):>10.6f}..{max(ts):<10.6f}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "parameters": params, "arms": result,
                                         "sink": sink, "delivered": delivered}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
