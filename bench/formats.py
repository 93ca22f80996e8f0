#!/usr/bin/env python3
"""Mixed-format directory benchmark: `trainguard scan` vs the time to read only the bytes it needs.

Builds (once, in bench/out/formats/) a model folder of mixed formats — every format fixture of
the scanner (safetensors, GGUF, ONNX, Keras, skops, SavedModel, pickles, torch zip/legacy/tar,
numpy, joblib, wrappers) plus large files as a real model folder has them: a safetensors file,
a .npy array and a torch zip checkpoint from bench/out/big when present (made by
`bench/scan.py --sections big`; the folder is built once, so delete it to add one later; the
output says whether it is there) — then:

1. runs `trainguard scan --format json DIR` once to learn, for every file, how many bytes it
   read (`bytes_read`), and once under `strace` to learn which byte ranges those were (the
   `pread64` calls, overlapping ranges merged);
2. times, interleaved, N runs of the scan (whole process) and N runs of the floor: a native
   process (`read_floor.rs`, built with rustc and linked the way the trainguard binary is,
   statically or not) that opens each file and reads those ranges, one positioned read each,
   and nothing else, so both pay the same kind of process start. The bytes a scan needs are
   where the format puts them: a zip checkpoint's end record, central directory, every
   member's local header (the loader reads each one; the scan checks them against the
   directory) and its pickle, spread over gigabytes; the floor reads the same ones;
3. does so with the page cache warm (the folder was just read) and cold (the folder's files,
   and only those, evicted with posix_fadvise before every run: a folder read from disk), and
   prints the ratio scan / floor for each (target: within 2x). Two more numbers, for scale: the
   "byte-count floor", the same number of bytes per file read from offset 0 in one call (fewer
   reads than the bytes' places allow: below what any reader of these formats can do), and,
   warm, the same reads as a loop inside the Python driver with no process start at all.

Without `strace` (Debian: `apt-get install strace`) there are no ranges: the byte-count floor
is the only floor, and the output says so.

    python3 bench/formats.py [--runs 5] [--modes warm,cold] [--trainguard target/dist/trainguard]

`scripts/build-release` builds target/dist/trainguard.

Standard library only. Nothing here loads a model file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
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


def evict(paths) -> None:
    """Drop these files (only these) from the page cache: the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def is_static(exe: Path) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP): linked statically."""
    with open(exe, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        order = "little" if head[5] == 1 else "big"
        phoff = int.from_bytes(head[32:40], order)
        phentsize = int.from_bytes(head[54:56], order)
        phnum = int.from_bytes(head[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return not any(int.from_bytes(table[i * phentsize:i * phentsize + 4], order) == 3
                   for i in range(phnum))


def floor_binary(static: bool) -> Path:
    """bench/read_floor.rs built with plain rustc (no cargo, no dependencies), linked
    statically when the trainguard under test is (the same process start on both sides)."""
    src = BENCH / "read_floor.rs"
    exe = OUT / ("read_floor-static" if static else "read_floor")
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        flags = ["-C", "target-feature=+crt-static"] if static else []
        subprocess.run(["rustc", "-O", "--edition", "2021", *flags, "-o", str(exe), str(src)],
                       check=True)
    return exe


# `pread64(3</abs/path>, ""..., 65536, 0) = 65536` as `strace -y -s 0` writes it.
PREAD = re.compile(r'^pread64\(\d+<(?P<path>.*)>, ".*"(?:\.\.\.)?, \d+, (?P<offset>\d+)\)'
                   r' += (?P<got>\d+)$')


def traced_ranges(cmd: list, paths: list) -> dict | None:
    """The byte ranges the scan read from each of `paths`, as `strace` saw its `pread64`
    calls (every thread, `-ff`), sorted and merged where they overlap or touch. None without
    strace, or when it saw no read (it could not trace: the scan's own exit status is 1 for
    findings, so strace's is no guide). Only `pread64` is taken: the scanner reads files with positioned reads only (its
    one `preadv2` is a 1-byte probe inside a local header that is read in full anyway)."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    real = {os.path.realpath(p): p for p in paths}
    found: dict[str, list] = {p: [] for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([strace, "-ff", "-y", "-s", "0", "-qq", "-e", "trace=pread64",
                        "-o", f"{tmp}/t", *cmd], capture_output=True, check=False)
        for trace in Path(tmp).iterdir():
            for line in trace.read_text(errors="replace").splitlines():
                m = PREAD.match(line)
                if m and m["path"] in real and int(m["got"]) > 0:
                    found[real[m["path"]]].append((int(m["offset"]), int(m["got"])))
    if not any(found.values()):
        return None
    ranges = {}
    for path, reads in found.items():
        merged: list = []
        for off, n in sorted(reads):
            if merged and off <= merged[-1][0] + merged[-1][1]:
                start, length = merged[-1]
                merged[-1] = (start, max(start + length, off + n) - start)
            else:
                merged.append((off, n))
        ranges[path] = merged
    return ranges


def in_process_floor(ranges: dict) -> float:
    t = time.perf_counter()
    for path, spans in ranges.items():
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, left in spans:
                while left > 0:
                    got = len(os.pread(fd, min(left, 8 << 20), off))
                    if got == 0:
                        break
                    left -= got
                    off += got
        finally:
            os.close(fd)
    return time.perf_counter() - t


def listing(ranges: dict) -> str:
    """read_floor.rs's input: `PATH<TAB>OFFSET:LENGTH,...` per file."""
    return "".join(f"{p}\t{','.join(f'{o}:{n}' for o, n in spans)}\n" for p, spans in ranges.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trainguard", default=str(REPO / "target/dist/trainguard"),
                    help="the binary to time (build it with scripts/build-release)")
    ap.add_argument("--modes", default="warm,cold", help="warm: page cache holds the folder; "
                    "cold: the folder's files are evicted before every run (posix_fadvise)")
    args = ap.parse_args()
    folder = OUT / "model-folder"
    build(folder)
    if not Path(args.trainguard).is_file():
        sys.exit(f"{args.trainguard} not found: build it with scripts/build-release")
    static = is_static(Path(args.trainguard))
    floor_exe = floor_binary(static)
    cmd = [args.trainguard, "scan", "--format", "json", str(folder)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    needed = {r["path"]: min(r["bytes_read"], r["size"]) for r in reports}
    files = [r["path"] for r in reports]
    by_count = {p: [(0, n)] if n else [] for p, n in needed.items()}
    ranges = traced_ranges(cmd, files)
    floors = {"ranges": ranges, "count": by_count} if ranges else {"count": by_count}
    # The target is judged against the floor that reads the bytes where they are, when known.
    target = "ranges" if ranges else "count"
    n_ranges = sum(len(v) for v in ranges.values()) if ranges else None
    listings = {name: listing(spans) for name, spans in floors.items()}

    def run_floor(name: str) -> float:
        t = time.perf_counter()
        subprocess.run([floor_exe], input=listings[name], capture_output=True, text=True,
                       check=True)
        return time.perf_counter() - t

    def run_scan() -> float:
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True)
        return time.perf_counter() - t

    results = {}
    for mode in args.modes.split(","):
        scans, loops = [], []
        timed: dict[str, list] = {name: [] for name in floors}
        for _ in range(args.runs):  # interleaved, so load drift hits all alike
            if mode == "cold":
                evict(files)
            scans.append(run_scan())
            for name in floors:
                if mode == "cold":
                    evict(files)
                timed[name].append(run_floor(name))
            if mode == "warm":
                loops.append(in_process_floor(floors[target]))
        r = {"scan_s": statistics.median(scans),
             "in_process_loop_s": statistics.median(loops) if loops else None}
        for name, times in timed.items():
            r[f"floor_{name}_s"] = statistics.median(times)
            r[f"ratio_{name}"] = r["scan_s"] / r[f"floor_{name}_s"]
        r["floor_s"] = r[f"floor_{target}_s"]
        r["ratio"] = r["scan_s"] / r["floor_s"]
        results[mode] = r

    total = sum(r["size"] for r in reports)
    read = sum(needed.values())
    formats: dict[str, int] = {}
    for r in reports:
        formats[r["format"]] = formats.get(r["format"], 0) + 1
    print(f"folder: {len(reports)} files, {total / (1 << 30):.2f} GiB, {len(formats)} formats; "
          f"trainguard read {read / (1 << 20):.1f} MiB of it")
    print(f"  formats: {', '.join(f'{k} {v}' for k, v in sorted(formats.items()))}")
    # The folder is built once: whether it holds a large checkpoint depends on whether
    # bench/out/big had one then, and changes the result a lot (its pickle and hundreds of
    # local headers are the slowest file to scan), so say which it is.
    ckpts = [r for r in reports if r["format"] == "pytorch-zip" and r["size"] >= 1 << 30]
    if ckpts:
        for r in ckpts:
            print(f"  large checkpoint: {Path(r['path']).name}, {r['size'] / (1 << 30):.2f} GiB, "
                  f"{r['bytes_read'] / 1024:.0f} KiB of it read")
    else:
        print("  large checkpoint: none (to include one: python3 bench/scan.py --sections big "
              "--setup-only, then delete bench/out/formats/model-folder)")
    print(f"  binary: {args.trainguard} ({'static' if static else 'dynamic'}); floor: {floor_exe.name}")
    if ranges:
        print(f"  floor: the {n_ranges} byte ranges the scan read "
              f"({sum(n for v in ranges.values() for _, n in v) / (1 << 20):.2f} MiB), one read "
              f"each; byte-count floor: {len(by_count)} reads from offset 0")
    else:
        print("  floor: no strace (or it traced nothing), so the ranges read are unknown; the "
              "floor is the byte-count floor (same bytes per file from offset 0, one read: lower "
              "than the ranges floor)")
    print(f"{'page cache':<11} {'trainguard scan s':>18} {'floor process s':>16} {'ratio':>7}"
          f"  target <= 2x{'   byte-count floor s  ratio' if ranges else ''}")
    for mode, r in results.items():
        extra = (f"   {r['floor_count_s']:>18.4f} {r['ratio_count']:>5.2f}x" if ranges else "")
        print(f"{mode:<11} {r['scan_s']:>18.4f} {r['floor_s']:>16.4f} {r['ratio']:>6.2f}x  "
              f"{'met    ' if r['ratio'] <= 2 else 'NOT MET'}{extra}")
    if "warm" in results:
        loop = results["warm"]["in_process_loop_s"]
        print(f"(warm, the same reads as a loop inside this Python process, no process start: "
              f"{loop:.4f} s; trainguard / loop {results['warm']['scan_s'] / loop:.1f}x)")
    (OUT / "formats.json").write_text(json.dumps({
        "files": len(reports), "bytes": total, "bytes_read": read, "runs": args.runs,
        "ranges": n_ranges,
        "results": results, "formats": formats,
        "large_checkpoints": [Path(r["path"]).name for r in ckpts]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
