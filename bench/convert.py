#!/usr/bin/env python3
"""Conversion benchmark: trainguard convert vs torch.load + safetensors.torch.save_file, and cp.

The peer is what users run today (HF's convert.py does the same): unpickle the whole
checkpoint with torch (weights_only=True), make every tensor contiguous, save_file. trainguard
scans the file, evaluates the rebuild calls symbolically and copies storages into the output
inside the kernel. `cp` of the same checkpoint is the floor: the same bytes copied, no parsing.

One PyTorch zip checkpoint of --size-mb MiB (float32 matrices, one bf16 embedding, one
transposed view) is written by real torch.save (cached in --dir), then each tool converts it
--runs times. Fairness rules, all of them applied to every tool alike:

- same bytes: every tool reads the same checkpoint and writes a new file of (about) its size
  into the same directory, so the same file system;
- same cache state: the checkpoint is in the page cache for every run (each tool runs once,
  untimed, before the rounds); before each timed run, untimed, the tool's previous output is
  deleted and `sync` flushes every dirty page, so no run pays for an earlier one's writeback;
- interleaved: each round runs every tool once, the order rotating from round to round, so
  load drift and whatever the previous process left behind hit every tool alike;
- medians of wall clock and of CPU (user + system of the process, from wait4) are printed, with
  ratios, since a tool may use more than one core (trainguard and cp use one);
- durability: none of the tools calls fsync (trainguard writes a temporary file beside the
  output and renames it into place; cp writes the output directly, torch's save_file too).
  --flush times an fsync of each output after its run, outside the measured run, to show what
  writeback each output still owes.

Prints the table and ratios, checks that the outputs hold identical tensors (`trainguard diff`
of trainguard's output against the peer's, or against the checkpoint itself when the peer is
not run), and writes DIR/../convert.json. Standard library only; torch comes from --python.

    python3 bench/convert.py [--size-mb 200] [--runs 7] [--realtime] [--flush]
                             [--tools trainguard,torch+safetensors,cp] [--dir DIR]
                             [--baseline OTHER_TRAINGUARD]
                             [--python .venv/bin/python] [--trainguard target/release/trainguard]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

TOOLS = ("trainguard", "torch+safetensors", "cp")


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def flush(path: Path) -> float:
    """Seconds an fsync of `path` takes (its data still to be written back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help=f"comma-separated subset of {', '.join(TOOLS)}")
    ap.add_argument("--realtime", action="store_true",
                    help="run every timed command under SCHED_FIFO (`chrt -f 10`, root only): on a "
                         "shared machine this approximates an idle one")
    ap.add_argument("--flush", action="store_true",
                    help="after each run, time an fsync of its output (reported apart, not in wall)")
    ap.add_argument("--dir", type=Path, default=OUT,
                    help="where the checkpoint and the outputs go (default bench/out/convert)")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--trainguard", default=str(REPO / "target" / "release" / "trainguard"))
    ap.add_argument("--baseline", help="another trainguard binary, timed as one more tool in the "
                                       "same rounds (before/after comparisons)")
    args = ap.parse_args()
    names = [t for t in args.tools.split(",") if t]
    if not names or any(t not in TOOLS for t in names):
        sys.exit(f"--tools: choose from {', '.join(TOOLS)}")
    if "trainguard" not in names:
        sys.exit("--tools must include trainguard (the ratios are against it)")

    out = args.dir
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"ckpt-{args.size_mb}mb.pt"
    if not ckpt.exists():
        print(f"writing {ckpt} with torch.save ...", file=sys.stderr)
        subprocess.run([args.python, "-c", MAKE, str(args.size_mb), str(ckpt)], check=True)
    outputs = {
        "trainguard": out / "trainguard.safetensors",
        "torch+safetensors": out / "peer.safetensors",
        "cp": out / "copy.pt",
    }
    commands = {
        "trainguard": [args.trainguard, "convert", str(ckpt), str(outputs["trainguard"])],
        "torch+safetensors": [args.python, "-c", PEER, str(ckpt), str(outputs["torch+safetensors"])],
        "cp": ["cp", str(ckpt), str(outputs["cp"])],
    }
    if args.baseline:
        names.insert(1, "trainguard baseline")
        outputs["trainguard baseline"] = out / "baseline.safetensors"
        commands["trainguard baseline"] = [args.baseline, "convert", str(ckpt),
                                           str(outputs["trainguard baseline"])]
    prefix = ["chrt", "-f", "10"] if args.realtime else []

    def one(name: str) -> tuple[float, float, int, float | None]:
        outputs[name].unlink(missing_ok=True)
        os.sync()
        wall, cpu, rss = timed(prefix + commands[name])
        return wall, cpu, rss, flush(outputs[name]) if args.flush else None

    load_before = loadavg()
    for name in names:  # warm-up: the checkpoint and each program in the page cache
        one(name)
    runs: dict[str, list[tuple[float, float, int, float | None]]] = {n: [] for n in names}
    for r in range(args.runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(one(name))
    load_after = loadavg()

    results = {}
    for name in names:
        got = runs[name]
        results[name] = {
            "wall_s": statistics.median(x[0] for x in got),
            "cpu_s": statistics.median(x[1] for x in got),
            "peak_rss_mb": max(x[2] for x in got) / (1 << 20),
            "walls": [round(x[0], 4) for x in got],
            "cpus": [round(x[1], 4) for x in got],
        }
        if args.flush:
            results[name]["flush_s"] = statistics.median(x[3] for x in got)
    if "torch+safetensors" in names:
        versus, against = "torch+safetensors output", outputs["torch+safetensors"]
    else:
        versus, against = "the checkpoint", ckpt
    same = subprocess.run([args.trainguard, "diff", str(outputs["trainguard"]), str(against)],
                          stdout=subprocess.DEVNULL).returncode == 0

    size = ckpt.stat().st_size
    print(f"checkpoint: {size / (1 << 20):.0f} MiB; median of {args.runs} interleaved runs, page "
          f"cache warm{', SCHED_FIFO' if args.realtime else ''}; load average {load_before} -> "
          f"{load_after}; {os.cpu_count()} cores, Linux {platform.release()}")
    head = f"{'tool':<20} {'wall s':>8} {'cpu s':>8} {'GiB/s':>7} {'peak RSS MiB':>13}"
    print(head + (f" {'fsync after s':>14}" if args.flush else ""))
    for name, r in results.items():
        line = (f"{name:<20} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} "
                f"{size / (1 << 30) / r['wall_s']:>7.2f} {r['peak_rss_mb']:>13.0f}")
        print(line + (f" {r['flush_s']:>14.3f}" if args.flush else ""))
    tg = results["trainguard"]
    if "torch+safetensors" in results:
        peer = results["torch+safetensors"]
        print(f"ratio peer/trainguard: wall {peer['wall_s'] / tg['wall_s']:.1f}x, "
              f"cpu {peer['cpu_s'] / tg['cpu_s']:.1f}x, "
              f"memory {peer['peak_rss_mb'] / tg['peak_rss_mb']:.1f}x")
    if "cp" in results:
        cp = results["cp"]
        for name in ("trainguard", "trainguard baseline"):
            if name in results:
                r = results[name]
                print(f"ratio {name}/cp (same bytes): wall {r['wall_s'] / cp['wall_s']:.2f}x, "
                      f"cpu {r['cpu_s'] / cp['cpu_s']:.2f}x")
    print(f"trainguard's output holds the same tensors as {versus}: {same}")
    (out.parent / "convert.json").write_text(json.dumps({
        "size_mb": args.size_mb, "bytes": size, "runs": args.runs, "realtime": args.realtime,
        "load_average": [load_before, load_after], "kernel": platform.release(),
        "results": results, "identical": same, "compared_with": versus,
    }, indent=2) + "\n")
    if not same:
        sys.exit("the outputs differ")


if __name__ == "__main__":
    main()
