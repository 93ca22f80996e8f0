#!/usr/bin/env python3
"""Conversion benchmark: trainguard convert vs torch.load + safetensors.torch.save_file.

The peer is what users run today (HF's convert.py does the same): unpickle the whole
checkpoint with torch (weights_only=True), make every tensor contiguous, save_file. trainguard
scans the file, evaluates the rebuild calls symbolically and streams storages into the output.

One PyTorch zip checkpoint of --size-mb MiB (float32 matrices, one bf16 embedding, one
transposed view) is written by real torch.save (cached in bench/out/convert/), then each tool
converts it --runs times (page cache warm; runs interleaved across tools, each one writing a new
output file after a sync). Prints median wall clock, peak RSS and the ratio
peer / trainguard, checks that both outputs hold identical tensors (trainguard diff, exit 0),
and writes bench/out/convert.json. Standard library only; torch comes from --python.

    python3 bench/convert.py [--size-mb 200] [--runs 3] [--python .venv/bin/python]
                             [--trainguard target/release/trainguard]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out" / "convert"

MAKE = r"""
import sys, torch
size_mb, path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
mats = max(1, (size_mb - 8) // 4)  # 1024x1024 float32 = 4 MiB each
sd = {f"layers.{i}.weight": torch.randn(1024, 1024) for i in range(mats)}
sd["embed.weight"] = torch.randn(2048, 1024).to(torch.bfloat16)  # 4 MiB
sd["head.weight"] = torch.randn(1024, 1024).t()  # a view: transposed, 4 MiB
sd["step"] = 1000
torch.save(sd, path)
"""

PEER = r"""
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], weights_only=True)
tensors = {k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
meta = {k: str(v) for k, v in sd.items() if not isinstance(v, torch.Tensor)}
meta["format"] = "pt"
save_file(tensors, sys.argv[2], metadata=meta)
"""


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{err}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--trainguard", default=str(REPO / "target" / "release" / "trainguard"))
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / f"ckpt-{args.size_mb}mb.pt"
    if not ckpt.exists():
        print(f"writing {ckpt} with torch.save ...", file=sys.stderr)
        subprocess.run([args.python, "-c", MAKE, str(args.size_mb), str(ckpt)], check=True)
    tg_out, peer_out = OUT / "trainguard.safetensors", OUT / "peer.safetensors"
    tools = {
        "trainguard": [args.trainguard, "convert", str(ckpt), str(tg_out)],
        "torch+safetensors": [args.python, "-c", PEER, str(ckpt), str(peer_out)],
        # The floor: copying the same bytes, no parsing at all.
        "cp": ["cp", str(ckpt), str(OUT / "copy.pt")],
    }
    outputs = {"trainguard": tg_out, "torch+safetensors": peer_out, "cp": OUT / "copy.pt"}
    runs: dict[str, list] = {name: [] for name in tools}
    for _ in range(args.runs):
        # Interleaved, so load drift on a shared machine hits every tool alike. Before each
        # run, untimed: the previous output is deleted (every tool writes a new file; freeing
        # the old one's pages is nobody's conversion work) and dirty pages are flushed (no
        # tool pays for the previous one's writeback).
        for name, cmd in tools.items():
            outputs[name].unlink(missing_ok=True)
            os.sync()
            runs[name].append(timed(cmd))
    results = {}
    for name in tools:
        results[name] = {
            "wall_s": statistics.median(r[0] for r in runs[name]),
            "peak_rss_mb": max(r[1] for r in runs[name]) / (1 << 20),
        }
    same = subprocess.run([args.trainguard, "diff", str(tg_out), str(peer_out)],
                          stdout=subprocess.DEVNULL).returncode == 0
    tg, peer = results["trainguard"], results["torch+safetensors"]
    print(f"checkpoint: {ckpt.stat().st_size / (1 << 20):.0f} MiB, {args.runs} runs, warm cache")
    print(f"{'tool':<20} {'wall s':>8} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(f"{name:<20} {r['wall_s']:>8.2f} {r['peak_rss_mb']:>13.0f}")
    print(f"ratio peer/trainguard: wall {peer['wall_s'] / tg['wall_s']:.1f}x, "
          f"memory {peer['peak_rss_mb'] / tg['peak_rss_mb']:.1f}x")
    cp = results["cp"]
    print(f"ratio trainguard/cp (same bytes): wall {tg['wall_s'] / cp['wall_s']:.2f}x")
    print(f"outputs hold identical tensors: {same}")
    (BENCH / "out" / "convert.json").write_text(json.dumps(
        {"size_mb": args.size_mb, "runs": args.runs, "results": results, "identical": same},
        indent=2) + "\n")
    if not same:
        sys.exit("the two outputs differ")


if __name__ == "__main__":
    main()
