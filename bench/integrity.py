#!/usr/bin/env python3
"""Integrity benchmark: `trainguard seal` vs `model_signing sign key` vs `sha256sum`, and
`trainguard env verify` on an environment with torch installed.

Every tool runs on the same directory in one run; the table prints medians and ratios
(other tool / trainguard). The page cache is warm for every tool (each command runs once
before timing), so the numbers compare hashing and signing work, not the disk.

    python3 bench/integrity.py [--gb 4] [--files 8] [--runs 3] [--python PYTHON_WITH_TORCH]

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


def timed(cmd: list[str], runs: int) -> tuple[float, list[float]]:
    """Run cmd once to warm up, then `runs` times; return (median seconds, all samples)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), samples


def timed_any_exit(cmd: list[str], runs: int) -> float:
    """Like timed, for commands whose exit code is a verdict (env verify exits 1 on findings)."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


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
    ap.add_argument("--python", help="interpreter whose environment `env verify` checks (default: .venv/bin/python)",
                    default=str(REPO / ".venv/bin/python"))
    args = ap.parse_args()

    tg = args.trainguard
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

    rows = []
    tg_seal, _ = timed([tg, "seal", str(model), "--private-key", key, "--signature", str(OUT / "tg.sig")], args.runs)
    rows.append(("trainguard seal", tg_seal))
    ms, _ = timed([args.model_signing, "sign", "key", "--private_key", key, "--signature", str(OUT / "ms.sig"),
                   str(model)], args.runs)
    rows.append(("model_signing sign key", ms))
    sha, _ = timed(["sha256sum", *files], args.runs)
    rows.append(("sha256sum (one process)", sha))
    # The bundle trainguard wrote verifies with model_signing: the comparison is like for like.
    subprocess.run([args.model_signing, "verify", "key", "--public_key", str(keys / "bench.pub.pem"),
                    "--signature", str(OUT / "tg.sig"), str(model)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

    env_rows = []
    probe = subprocess.run([args.python, "-c", "import importlib.util as u; print(bool(u.find_spec('torch')))"],
                           capture_output=True, text=True)
    has_torch = probe.stdout.strip() == "True"
    env_med = timed_any_exit([tg, "env", "verify", "--python", args.python], args.runs)
    env_rows.append((f"trainguard env verify ({'with' if has_torch else 'WITHOUT'} torch)", env_med))

    gib = total / (1 << 30)
    print(f"\nseal: {len(files)} files, {gib:.2f} GiB, page cache warm, median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'tool':<28} {'seconds':>9} {'GiB/s':>7} {'ratio vs trainguard':>20}")
    for name, secs in rows:
        print(f"{name:<28} {secs:>9.3f} {gib / secs:>7.2f} {secs / tg_seal:>19.2f}x")
    print(f"\nenv verify of {args.python}:")
    for name, secs in env_rows:
        print(f"{name:<40} {secs:>7.3f} s")
    (OUT / "integrity.json").write_text(json.dumps({
        "files": len(files), "bytes": total, "runs": args.runs,
        "seal": {name: secs for name, secs in rows},
        "env_verify": {name: secs for name, secs in env_rows},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
