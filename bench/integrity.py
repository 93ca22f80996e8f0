#!/usr/bin/env python3
"""Integrity benchmark: `trainguard seal` vs `model_signing sign key` vs `sha256sum`, and
`trainguard env verify` on an environment with torch installed.

Every tool runs on the same directory in one run, runs interleaved across tools; the table
prints medians of wall-clock and CPU seconds (user + system) and ratios (other tool /
trainguard). The page cache is warm for every tool (each command runs once before timing), so
the numbers compare hashing and signing work, not the disk. On a shared machine read the CPU
column too: wall clock depends on what else runs.

    python3 bench/integrity.py [--gb 4] [--files 8] [--runs 3] [--realtime] [--python PYTHON_WITH_TORCH]

Needs: target/release/trainguard (`cargo build --release -p trainguard`), and model_signing
(from requirements-test.txt, installed in .venv by scripts/setup-python). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out" / "integrity"


def run_once(cmd: list[str], check: bool) -> tuple[float, float]:
    """Run cmd once; return (wall seconds, CPU seconds: user + system of the child)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    return wall, usage.ru_utime + usage.ru_stime


def timed(cmds: dict[str, tuple[list[str], bool]], runs: int) -> dict[str, tuple[float, float]]:
    """Run every command once to warm up, then `runs` rounds, interleaved so that load from
    other users of the machine hits every tool alike. Returns name -> (median wall, median CPU).
    The bool says whether a non-zero exit is an error (env verify exits 1 on findings)."""
    for cmd, check in cmds.values():
        run_once(cmd, check)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, (cmd, check) in cmds.items():
            samples[name].append(run_once(cmd, check))
    return {
        name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for name, got in samples.items()
    }


def sha256_core_rate() -> float | None:
    """SHA-256 bytes per second on one core from `openssl speed` (1 MiB blocks), or None."""
    if not shutil.which("openssl"):
        return None
    out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-bytes", "1048576", "-seconds", "2"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "sha256" and parts[1].endswith("k"):
            return float(parts[1][:-1]) * 1000
    return None


def loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def make_model_dir(path: Path, gb: float, files: int) -> None:
    want = int(gb * (1 << 30))
    marker = path / ".bench-size"
    if marker.exists() and marker.read_text() == f"{want}:{files}":
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    per = want // files
    chunk = os.urandom(1 << 20)
    for i in range(files):
        with open(path / f"model-{i + 1:05d}-of-{files:05d}.safetensors", "wb") as f:
            left = per
            while left > 0:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
                # vary the content cheaply so files differ
                chunk = chunk[1:] + chunk[:1]
    (path / "config.json").write_text('{"model_type": "bench"}\n')
    marker.write_text(f"{want}:{files}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0, help="total size of the model directory (GiB)")
    ap.add_argument("--files", type=int, default=8, help="number of weight files")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trainguard", default=str(REPO / "target/release/trainguard"))
    ap.add_argument("--model-signing", default=str(REPO / ".venv/bin/model_signing"))
    ap.add_argument("--realtime", action="store_true",
                    help="run every timed command under SCHED_FIFO (`chrt -f 10`, root only): on a shared machine "
                         "this approximates an idle one (the kernel still leaves others 5%% of each second)")
    ap.add_argument("--python", help="interpreter whose environment `env verify` checks (default: .venv/bin/python)",
                    default=str(REPO / ".venv/bin/python"))
    args = ap.parse_args()

    tg = args.trainguard
    prefix = ["chrt", "-f", "10"] if args.realtime else []
    for tool in (tg, args.model_signing):
        if not Path(tool).exists():
            print(f"error: {tool} not found (build with cargo build --release -p trainguard; run scripts/setup-python)",
                  file=sys.stderr)
            return 2
    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "model"
    make_model_dir(model, args.gb, args.files)
    keys = OUT / "keys"
    keys.mkdir(exist_ok=True)
    if not (keys / "bench.key.pem").exists():
        subprocess.run([tg, "keygen", "--out", str(keys / "bench")], check=True, stdout=subprocess.DEVNULL)
    key = str(keys / "bench.key.pem")
    files = sorted(str(p) for p in model.iterdir() if p.is_file() and not p.name.startswith("."))
    total = sum(Path(f).stat().st_size for f in files)

    load_before = loadavg()
    seal_cmds = {
        "trainguard seal": ([tg, "seal", str(model), "--private-key", key, "--signature", str(OUT / "tg.sig")], True),
        "model_signing sign key": ([args.model_signing, "sign", "key", "--private_key", key, "--signature",
                                    str(OUT / "ms.sig"), str(model)], True),
        "sha256sum (one process)": (["sha256sum", *files], True),
    }
    seal_cmds["model_signing start-up only (--help)"] = ([args.model_signing, "--help"], True)
    seal = timed({name: (prefix + cmd, check) for name, (cmd, check) in seal_cmds.items()}, args.runs)
    # The bundle trainguard wrote verifies with model_signing: the comparison is like for like.
    subprocess.run([args.model_signing, "verify", "key", "--public_key", str(keys / "bench.pub.pem"),
                    "--signature", str(OUT / "tg.sig"), str(model)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    probe = subprocess.run([args.python, "-c", "import importlib.util as u; print(bool(u.find_spec('torch')))"],
                           capture_output=True, text=True)
    has_torch = probe.stdout.strip() == "True"
    env_cmd = [tg, "env", "verify", "--python", args.python]
    env_name = f"trainguard env verify ({'with' if has_torch else 'WITHOUT'} torch)"
    env = timed({env_name: (prefix + env_cmd, False)}, args.runs)
    report = json.loads(subprocess.run([*env_cmd, "--format", "json"], capture_output=True, text=True).stdout)
    env_bytes = report["bytes_hashed"]
    load_after = loadavg()

    rate = sha256_core_rate()
    cores = os.cpu_count() or 1

    def floor(nbytes: int) -> str:
        if rate is None:
            return "SHA-256 floor: n/a (no openssl)"
        return (f"SHA-256 alone at {rate / 1e9:.2f} GB/s per core (openssl speed): {nbytes / rate / cores:.3f} s "
                f"on {cores} cores, before any read")

    gib = total / (1 << 30)
    tg_wall, tg_cpu = seal["trainguard seal"]
    print(f"\nseal: {len(files)} files, {gib:.2f} GiB, page cache warm, median of {args.runs} interleaved runs, "
          f"{cores} cores, load average {load_before} -> {load_after}{', SCHED_FIFO' if args.realtime else ''}")
    print(floor(total))
    print(f"{'tool':<36} {'wall s':>8} {'GiB/s':>7} {'cpu s':>7} {'wall ratio':>11} {'cpu ratio':>10}")
    for name, (wall, cpu) in seal.items():
        if name.startswith("model_signing start-up"):
            # Part of model_signing's row above, shown alone: no throughput, no ratio.
            print(f"{name:<36} {wall:>8.3f} {'-':>7} {cpu:>7.2f} {'-':>11} {'-':>10}")
            continue
        print(f"{name:<36} {wall:>8.3f} {gib / wall:>7.2f} {cpu:>7.2f} {wall / tg_wall:>10.2f}x {cpu / tg_cpu:>9.2f}x")
    env_wall, env_cpu = env[env_name]
    print(f"\nenv verify of {args.python}: {report['files_hashed']} files, {env_bytes / (1 << 30):.2f} GiB hashed, "
          f"page cache warm (env verify keeps no digest cache)")
    print(floor(env_bytes))
    print(f"{env_name:<40} {env_wall:>7.3f} s wall {env_cpu:>7.2f} s cpu {env_bytes / (1 << 30) / env_wall:>6.2f} GiB/s")
    (OUT / "integrity.json").write_text(json.dumps({
        "files": len(files), "bytes": total, "runs": args.runs, "cores": cores,
        "load_average": [load_before, load_after], "realtime": args.realtime, "sha256_bytes_per_s_per_core": rate,
        "seal": {name: {"wall_s": w, "cpu_s": c} for name, (w, c) in seal.items()},
        "env_verify": {name: {"wall_s": w, "cpu_s": c, "bytes_hashed": env_bytes} for name, (w, c) in env.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
