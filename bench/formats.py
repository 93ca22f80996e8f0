#!/usr/bin/env python3
"""Mixed-format directory benchmark: `trainguard scan` vs the time to read only the bytes it needs.

Builds (once, in bench/out/formats/) a model folder of mixed formats — every format fixture of
the scanner (safetensors, GGUF, ONNX, Keras, skops, SavedModel, pickles, torch zip/legacy/tar,
numpy, joblib, wrappers) plus large files as a real model folder has them: a safetensors file,
a .npy array and a torch zip checkpoint from bench/out/big when present — then:

1. runs `trainguard scan --format json DIR` (whole process, page cache warm, median of N),
   which reports for every file how many bytes it read (`bytes_read`);
2. times the floor: one process reading exactly that many bytes of each file with `os.pread`
   (the loop alone, interpreter start-up excluded, so the floor is as low as it gets);
3. prints the ratio scan / floor (target: within 2x).

    python3 bench/formats.py [--runs 5] [--trainguard target/release/trainguard]

Standard library only. Nothing here loads a model file.
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
OUT = BENCH / "out" / "formats"


def build(folder: Path) -> None:
    if (folder / ".built").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # Every format fixture (benign and malicious, made with the real libraries), and the benign
    # pickle-family fixtures; the attack fixtures built to hit resource caps are left out: they
    # measure the caps, not a model folder.
    fixtures = REPO / "crates/tg-scan/tests/format_fixtures"
    for f in sorted(fixtures.iterdir()):
        if f.is_file() and f.suffix not in (".py", ".csv", ".md"):
            shutil.copy(f, folder / f"formats-{f.name}")
    pickles = REPO / "crates/tg-scan/tests/fixtures"
    for line in (pickles / "expected.csv").read_text().splitlines()[1:]:
        name, verdict = line.split(",")[:2]
        if verdict == "clean":
            shutil.copy(pickles / name, folder / f"pickles-{name}")
    # Large files: a safetensors file (header + raw data) and a float32 .npy, written directly.
    n = 256 << 20
    header = json.dumps({"w": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n]}}).encode()
    header += b" " * (-(len(header) + 8) % 8)
    chunk = os.urandom(1 << 20)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for _ in range(n >> 20):
            f.write(chunk)
    npy_header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % (n // 4)
    npy_header += b" " * (-(len(npy_header) + 11) % 64) + b"\n"
    with open(folder / "embeddings.npy", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(npy_header).to_bytes(2, "little") + npy_header)
        for _ in range(n >> 20):
            f.write(chunk)
    big = BENCH / "out" / "big"
    if big.is_dir():
        for ckpt in sorted(big.glob("*.pt"))[:1]:
            os.link(ckpt, folder / ckpt.name) if ckpt.stat().st_dev == folder.stat().st_dev else shutil.copy(ckpt, folder)
    (folder / ".built").write_text("ok")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trainguard", default=str(REPO / "target/release/trainguard"))
    args = ap.parse_args()
    folder = OUT / "model-folder"
    build(folder)
    cmd = [args.trainguard, "scan", "--format", "json", str(folder)]
    subprocess.run(cmd, stdout=subprocess.DEVNULL)  # warm the page cache
    walls, reports = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        reports = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    needed = {r["path"]: min(r["bytes_read"], r["size"]) for r in reports}
    floors = []
    for _ in range(args.runs):
        t = time.perf_counter()
        for path, n in needed.items():
            fd = os.open(path, os.O_RDONLY)
            try:
                left, off = n, 0
                while left > 0:
                    got = len(os.pread(fd, min(left, 8 << 20), off))
                    if got == 0:
                        break
                    left -= got
                    off += got
            finally:
                os.close(fd)
        floors.append(time.perf_counter() - t)
    scan, floor = statistics.median(walls), statistics.median(floors)
    total = sum(r["size"] for r in reports)
    read = sum(needed.values())
    formats: dict[str, int] = {}
    for r in reports:
        formats[r["format"]] = formats.get(r["format"], 0) + 1
    print(f"folder: {len(reports)} files, {total / (1 << 30):.2f} GiB, {len(formats)} formats; "
          f"trainguard read {read / (1 << 20):.1f} MiB of it")
    print(f"  formats: {', '.join(f'{k} {v}' for k, v in sorted(formats.items()))}")
    print(f"{'measure':<44} {'median s':>9}")
    print(f"{'trainguard scan (whole process)':<44} {scan:>9.4f}")
    print(f"{'floor: pread of exactly those bytes (loop)':<44} {floor:>9.4f}")
    print(f"ratio scan / floor: {scan / floor:.2f}x (target <= 2x)")
    (OUT / "formats.json").write_text(json.dumps({
        "files": len(reports), "bytes": total, "bytes_read": read, "runs": args.runs,
        "scan_s": scan, "floor_s": floor, "ratio": scan / floor, "formats": formats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
