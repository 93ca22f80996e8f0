#!/usr/bin/env python3
"""Scanner benchmark: trainguard scan vs picklescan, modelscan, fickling and modelaudit.

Runs every tool on the same inputs in one run and prints ratios (peer / trainguard):

1. corpus: one invocation per tool over the whole public corpus directory
   (default /work/shared/corpus), wall clock and peak RSS of the whole process tree,
   median of N runs, plus how many manifest rows each tool flagged (malicious rows
   caught, benign rows flagged = false positives), parsed per file from each tool's output.
2. big:    one PyTorch zip checkpoint of --big-gb GiB written by real torch.save (cached in
   bench/out/big/), scanned by every tool, page cache cold (file evicted) and warm.

Writes bench/out/scan.json. Standard library only (Python >= 3.10; tested on 3.11). Peers are
pip-installed from the exact pins in bench/requirements/<venv>.txt into bench/.venv/<venv>/.
Nothing here ever loads a corpus file with a Python loader; only the scanners read them.

    python3 bench/scan.py [--quick] [--tools trainguard,picklescan,...] [--runs N] [--big-gb G]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venv"
OUT = BENCH / "out"
REQS = BENCH / "requirements"
GIB = 1 << 30
MIB = 1 << 20

ALL_TOOLS = ["trainguard", "picklescan", "modelscan", "fickling", "fickling-api", "modelaudit",
             "modelaudit-core"]
# tool -> venv name (bench/.venv/<name>, pinned by bench/requirements/<name>.txt)
VENV_OF = {
    "picklescan": "picklescan",
    "modelscan": "modelscan",
    "fickling": "fickling",
    "fickling-api": "fickling",
    "modelaudit": "modelaudit",  # modelaudit[all], its recommended install (brings torch)
    "modelaudit-core": "modelaudit-core",  # plain `pip install modelaudit`
}
# How each tool is driven over a directory; shown in the tables.
HOW = {
    "trainguard": "1 process, dir",
    "picklescan": "1 process, dir",
    "modelscan": "1 process, dir",
    "fickling": "CLI per file (sh loop)",
    "fickling-api": "1 python, API per file",
    "modelaudit": "1 process, dir",
    "modelaudit-core": "1 process, dir",
}

# Environment for every child: no telemetry, no hub look-ups (the bench machine is offline
# except for package registries; a tool that phones home must not be timed waiting for it).
CHILD_ENV = {
    "PROMPTFOO_DISABLE_TELEMETRY": "1",  # modelaudit (posthog)
    "NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

FICKLING_LOOP_SH = r"""#!/bin/sh
# $1 = fickling executable, $2 = file with one path per line, $3 = json scratch file.
# Prints "<exit code><TAB><path>" per file. fickling: 0 likely safe, 1 unsafe, 2 parse error.
while IFS= read -r f; do
  "$1" --check-safety --json-output "$3" "$f" >/dev/null 2>&1
  printf '%s\t%s\n' "$?" "$f"
done < "$2"
"""

# One python process, fickling's own library API, the same dispatch its CLI uses for Hub
# repos (zip -> scan_zip_archive over .pkl/.bin members, else scan_file), graceful mode.
FICKLING_API_PY = r"""
import json, sys, zipfile
from fickling.analysis import Severity
from fickling.loader import scan_file, scan_zip_archive
lst, scratch = sys.argv[1], sys.argv[2]
for line in open(lst, encoding="utf-8"):
    p = line.rstrip("\n")
    try:
        if zipfile.is_zipfile(p):
            rs = list(scan_zip_archive(p, graceful=True, json_output_path=scratch).values())
        else:
            rs = [scan_file(p, graceful=True, json_output_path=scratch)]
        # flagged: an analysis result above LIKELY_SAFE. A parse error alone also raises
        # ScanResult.severity to SUSPICIOUS; that is counted as an error, not as a detection.
        rec = {"path": p, "flagged": any(a.severity > Severity.LIKELY_SAFE for r in rs for a in r.results),
               "errors": sum(len(r.errors) for r in rs),
               "severity": max((r.severity for r in rs), default=None).name if rs else "NONE"}
    except Exception as e:  # a crash on one file must not stop the loop
        rec = {"path": p, "flagged": False, "errors": 1, "severity": "CRASH", "exc": repr(e)[:200]}
    print(json.dumps(rec), flush=True)
"""

# Generates the big checkpoint with real torch.save, without holding it in RAM: one 64 MiB
# scratch file of N(0, 0.02) float32 values is mapped (MAP_PRIVATE, page-cache backed) once per
# tensor; torch.save streams each storage into the zip and computes real CRCs. Every tensor has
# the same bytes, which no scanner can tell from real weights without reading them.
GEN_PY = r"""
import os, sys, time, torch
path, total = sys.argv[1], int(sys.argv[2])
tmp, scratch = path + ".tmp", path + ".scratch"
rows, cols = 4096, 4096
n = rows * cols
with open(scratch, "wb") as f:
    f.truncate(n * 4)
src = torch.from_file(scratch, shared=True, size=n, dtype=torch.float32)
torch.manual_seed(0)
src.normal_(0.0, 0.02)
del src
sd, left, i = {}, total, 0
names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
while left > 0:
    k = min(n, max(1, left // 4))
    t = torch.from_file(scratch, shared=False, size=n, dtype=torch.float32)
    t = t.view(rows, cols) if k == n else t[:k].clone()
    sd[f"model.layers.{i // 4}.{names[i % 4]}.weight"] = t
    sd[f"model.layers.{i // 4}.{names[i % 4]}.bias"] = torch.zeros(16)
    left -= k * 4
    i += 1
t0 = time.time()
torch.save(sd, tmp)
os.replace(tmp, path)
os.unlink(scratch)
print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(sd)} tensors, torch {torch.__version__}, "
      f"{time.time() - t0:.1f}s", flush=True)
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- venvs


def req_file(name: str) -> Path:
    return REQS / f"{name}.txt"


def ensure_venv(name: str) -> Path:
    """Create bench/.venv/<name> from the exact pins unless it is already up to date."""
    venv = VENVS / name
    req = req_file(name)
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = venv / ".bench-requirements.sha256"
    py = venv / "bin" / "python"
    if py.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return venv
    log(f"installing {name} into {venv} from {req.relative_to(REPO)} (first run: minutes)")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run(pip + ["install", "-q", "-r", str(req)], check=True)
    stamp.write_text(digest + "\n")
    return venv


def pinned_version(venv_name: str, package: str) -> str | None:
    for line in req_file(venv_name).read_text().splitlines():
        if line.lower().startswith(package.lower() + "=="):
            return line.split("==", 1)[1]
    return None


# --------------------------------------------------------------------------- measuring


GNU_TIME = "/usr/bin/time"


def measure(argv, *, cwd: Path, stdout: Path, stderr: Path, timeout: float, rss: bool = False) -> dict:
    """Run argv once: wall clock and CPU time, or (rss=True) peak RSS.

    Timed runs start the tool straight from here (subprocess, vfork + exec) and read its CPU
    time from wait4(); the watchdog thread is started before the clock. Nothing else runs in
    between, so the harness adds about the cost of starting /bin/true (~0.5 ms) to every tool.

    Peak RSS needs a separate run (rss=True): a child started from this Python process inherits
    this process's RSS into its ru_maxrss (the kernel records the pre-exec high-water mark),
    inflating small tools by 10-40 MB, so that run goes through GNU time (/usr/bin/time -f %M),
    whose own fork and exec (~1 ms) would otherwise be timed too. Peak RSS is the largest
    single process in the tree (Linux folds reaped children into the parent's rusage as a max,
    not a sum).
    """
    env = dict(os.environ)
    env.update(CHILD_ENV)
    cwd.mkdir(parents=True, exist_ok=True)
    killed = threading.Event()
    rss_file = cwd / ".maxrss"
    use_time = rss and os.access(GNU_TIME, os.X_OK)
    if use_time:
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, *argv]
    child: list[subprocess.Popen] = []

    def kill():
        killed.set()
        try:
            os.killpg(child[0].pid, signal.SIGKILL)
        except (ProcessLookupError, IndexError):
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    argv = [str(a) for a in argv]
    try:
        with open(stdout, "wb") as so, open(stderr, "wb") as se:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=so, stderr=se, start_new_session=True)
            child.append(proc)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb, method = None, None
    if rss:
        rss_kb, method = ru.ru_maxrss, "wait4 (includes this driver's RSS at fork)"
        if use_time:
            try:
                rss_kb, method = int(rss_file.read_text().split()[-1]), "GNU time %M"
            except (OSError, ValueError, IndexError):
                pass
    return {
        "wall_s": wall,
        "peak_rss_mb": rss_kb / 1024.0 if rss_kb is not None else None,
        "rss_method": method,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "rc": proc.returncode,
        "timed_out": killed.is_set(),
    }


def list_files(target: Path) -> list[str]:
    if target.is_file():
        return [str(target)]
    out = []
    for root, dirs, files in os.walk(target):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_file() and not p.is_symlink():
                out.append(str(p))
    return out


class Runner:
    """Knows how to invoke and parse each tool."""

    def __init__(self, args):
        self.args = args
        tg = os.environ.get("TRAINGUARD") or str(REPO / "target" / "dist" / "trainguard")
        if "/" not in tg:
            tg = shutil.which(tg) or tg
        self.tg = Path(tg).absolute()  # tools run with cwd = their work dir
        self.tg_args = args.tg_args.split()

    def bin(self, tool: str, exe: str) -> Path:
        return VENVS / VENV_OF[tool] / "bin" / exe

    def command(self, tool: str, target: Path, work: Path) -> list:
        if tool == "trainguard":
            return [self.tg, *self.tg_args, target]
        if tool == "picklescan":
            return [self.bin(tool, "picklescan"), "--path", target]
        if tool == "modelscan":
            return [self.bin(tool, "modelscan"), "scan", "-p", target, "-r", "json",
                    "-o", work / "report.json"]
        if tool in ("fickling", "fickling-api"):
            lst = work / "files.txt"
            lst.write_text("".join(f + "\n" for f in list_files(target)), encoding="utf-8")
            if tool == "fickling":
                sh = work / "loop.sh"
                sh.write_text(FICKLING_LOOP_SH)
                return ["/bin/sh", sh, self.bin(tool, "fickling"), lst, work / "fickling.json"]
            return [self.bin(tool, "python"), "-c", FICKLING_API_PY, lst, work / "fickling.json"]
        if tool in ("modelaudit", "modelaudit-core"):
            return [self.bin(tool, "modelaudit"), "scan", "--no-cache", "-f", "json",
                    "-o", work / "report.json", target]
        raise ValueError(tool)

    def run(self, tool: str, target: Path, section: str, rss: bool = False) -> dict:
        work = OUT / "work" / section / tool
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        argv = self.command(tool, target, work)
        res = measure(argv, cwd=work, stdout=work / "stdout.txt", stderr=work / "stderr.txt",
                      timeout=self.args.timeout, rss=rss)
        res["argv"] = [str(a) for a in argv] if tool not in ("fickling-api",) else \
            [str(argv[0]), "-c", "<FICKLING_API_PY>", *map(str, argv[3:])]
        res["work"] = str(work)
        if tool == "fickling":  # the loop itself exits 0; the verdicts are per-file exit codes
            hist: dict[str, int] = {}
            for line in (work / "stdout.txt").read_text(errors="replace").splitlines():
                rc = line.partition("\t")[0]
                hist[rc] = hist.get(rc, 0) + 1
            res["per_file_rcs"] = hist
        return res

    # ---------------------------------------------------------------- parsing per file

    def parse(self, tool: str, target: Path, work: Path) -> dict:
        """Per-file results: {"flagged": set, "errors": set, "notes": [...]} or {"na": reason}.

        Paths are returned as the tool printed them; attribute() maps them to manifest rows.
        """
        stdout = (work / "stdout.txt").read_text(errors="replace")
        stderr = (work / "stderr.txt").read_text(errors="replace")
        flagged, errors, notes = set(), set(), []
        try:
            if tool == "trainguard":
                items = parse_trainguard(stdout)
                if items is None:
                    return {"na": "trainguard output is not JSON / JSON lines"}
                for it in items:
                    v = str(it.get("verdict", "")).lower()
                    if v in ("malicious", "suspicious"):
                        flagged.add(it["path"])
                    elif v in ("inconclusive", "error"):
                        errors.add(it["path"])
            elif tool == "picklescan":
                text = stdout + "\n" + stderr
                for line in text.splitlines():
                    if line.endswith(" FOUND") and ": dangerous import " in line:
                        flagged.add(line.split(": dangerous import ", 1)[0])
                    elif line.startswith("ERROR: parsing pickle in "):
                        errors.add(line[len("ERROR: parsing pickle in "):].split(": ", 1)[0])
                    elif line.startswith("WARNING: could not parse "):
                        errors.add(line[len("WARNING: could not parse "):].rsplit(" as pickle", 1)[0])
                tmp = sorted(p for p in flagged if p.startswith("/tmp/"))
                if tmp:
                    notes.append(f"{len(tmp)} finding(s) reported under a temporary extraction path "
                                 f"(picklescan unpacks .7z to /tmp), not attributable to a file: {', '.join(tmp)}")
                if "Unhandled exception" in text:
                    notes.append("picklescan aborted the scan (unhandled exception); "
                                 "files after the crash were not scanned")
            elif tool == "modelscan":
                rep = work / "report.json"
                if not rep.exists():
                    return {"na": "modelscan wrote no JSON report"}
                d = json.loads(rep.read_text())
                base = target if target.is_dir() else target.parent
                for it in d.get("issues", []):
                    flagged.add(str(base / it["source"]))
                for it in d.get("errors", []):
                    if it.get("source"):
                        errors.add(str(base / it["source"]))
                dep = sum(1 for it in d.get("errors", []) if it.get("category") == "DEPENDENCY")
                if dep:
                    notes.append(f"{dep} DEPENDENCY errors (scanner needs an extra, e.g. tensorflow)")
            elif tool == "fickling":
                hist: dict[str, int] = {}
                for line in stdout.splitlines():
                    rc, _, p = line.partition("\t")
                    hist[rc] = hist.get(rc, 0) + 1
                    if rc == "1":
                        flagged.add(p)
                    elif rc != "0":
                        errors.add(p)
                notes.append("per-file exit codes: " + ", ".join(f"{k}: {v} files" for k, v in sorted(hist.items())))
            elif tool == "fickling-api":
                for line in stdout.splitlines():
                    if not line.startswith("{"):
                        continue
                    r = json.loads(line)
                    if r["flagged"]:
                        flagged.add(r["path"])
                    if r["errors"]:
                        errors.add(r["path"])
            elif tool in ("modelaudit", "modelaudit-core"):
                rep = work / "report.json"
                if not rep.exists():
                    return {"na": "modelaudit wrote no JSON report"}
                d = json.loads(rep.read_text())
                for it in d.get("issues", []):
                    loc = it.get("location") or (it.get("details") or {}).get("path")
                    if not loc:
                        continue
                    sev = str(it.get("severity", "")).lower()
                    if sev in ("warning", "critical"):  # what its exit code 1 counts
                        flagged.add(strip_pos(loc))
                    elif sev == "error":
                        errors.add(strip_pos(loc))
                if d.get("has_errors"):
                    notes.append("has_errors=true")
        except Exception as e:  # noqa: BLE001 -- never lose a timing run to a parser bug
            return {"na": f"could not parse output: {e!r}"}
        return {"flagged": flagged, "errors": errors, "notes": notes}


def strip_pos(loc: str) -> str:
    """modelaudit locations: 'PATH[:member] (pos 23)', 'PATH (nested raw pickle at pos 242)',
    'PATH (layer ...'. Corpus paths contain no ' (' so cut there."""
    i = loc.find(" (")
    return loc[:i] if i > 0 else loc


def parse_trainguard(stdout: str):
    """trainguard --format json: a JSON array, an object holding one, or one object per line."""
    s = stdout.strip()
    if not s:
        return None
    try:
        d = json.loads(s)
        if isinstance(d, list):
            return [x for x in d if isinstance(x, dict) and "path" in x]
        if isinstance(d, dict):
            if "path" in d:
                return [d]
            for k in ("files", "reports", "results"):
                if isinstance(d.get(k), list):
                    return [x for x in d[k] if isinstance(x, dict) and "path" in x]
    except json.JSONDecodeError:
        pass
    items = []
    for line in s.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError:
            return None
        if isinstance(x, dict) and "path" in x:
            items.append(x)
    return items if items else None


# --------------------------------------------------------------------------- manifest


def load_manifest(corpus: Path) -> dict[str, str]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row["expected"] for row in csv.DictReader(f)}


def attribute(reported: set[str], corpus: Path, manifest: dict[str, str]) -> tuple[set, set]:
    """Map paths as printed (absolute or corpus-relative, maybe with ':member' or '!member')
    to manifest rows. Returns (rows, other_paths_not_in_manifest)."""
    rows, other = set(), set()
    root = str(corpus.resolve()) + "/"
    for p in reported:
        q = p[len(root):] if p.startswith(root) else p
        q = q[2:] if q.startswith("./") else q
        hit = q if q in manifest else None
        if hit is None:
            for i, ch in enumerate(q):
                if ch in ":!#" and q[:i] in manifest:
                    hit = q[:i]
                    break
        (rows if hit else other).add(hit or q.split(":", 1)[0])
    return rows, other


# --------------------------------------------------------------------------- sections


def tg_usable(runner: Runner, probe: Path | None) -> tuple[bool, str]:
    """trainguard is benchmarked only if it exists and answers `scan` on one small file with
    exit 0/1 and parseable per-file JSON; otherwise it is skipped (ratios n/a)."""
    if not runner.tg.exists():
        return False, f"{runner.tg} not found (build it: scripts/build-release)"
    if not os.access(runner.tg, os.X_OK):
        return False, f"{runner.tg} is not executable"
    if probe is not None:
        p = subprocess.run([str(runner.tg), *runner.tg_args, str(probe)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **CHILD_ENV})
        if p.returncode not in (0, 1) or parse_trainguard(p.stdout) is None:
            err = (p.stderr.strip().splitlines() or ["no stderr"])[0]
            return False, (f"`trainguard {' '.join(runner.tg_args)} {probe}` exited {p.returncode} "
                           f"without per-file JSON ({err})")
    return True, ""


def run_corpus(runner: Runner, tools: list[str], corpus: Path, runs: int) -> dict:
    manifest = load_manifest(corpus)
    expected = {k: [p for p, e in manifest.items() if e == k] for k in ("malicious", "benign", "unknown")}
    log(f"corpus: {corpus} ({len(list_files(corpus))} files, manifest rows: "
        + ", ".join(f"{k} {len(v)}" for k, v in expected.items()) + f"), {runs} run(s) per tool")
    results = {t: {"runs": []} for t in tools}
    for r in range(runs):
        for t in tools:  # interleaved, so slow drift of machine load hits every tool alike
            res = runner.run(t, corpus, f"corpus-{t}")
            results[t]["runs"].append(res)
            log(f"corpus run {r + 1}/{runs} {t:13s} {res['wall_s']:8.3f} s rc={res['rc']}"
                + (" TIMEOUT" if res["timed_out"] else ""))
            if r == runs - 1:
                parsed = runner.parse(t, corpus, Path(res["work"]))
                results[t]["detection"] = summarize_detection(parsed, corpus, manifest, expected)
                keep_logs(Path(res["work"]), f"corpus-{t}")
    for t in tools:  # peak RSS: one more run each, under GNU time, not timed
        res = runner.run(t, corpus, f"corpus-{t}", rss=True)
        results[t]["rss_run"] = res
        log(f"corpus rss run {t:13s} {res['peak_rss_mb'] or 0:8.1f} MB rc={res['rc']}")
    for t in tools:
        finish(results[t])
    return {"target": str(corpus), "runs": runs, "files": len(list_files(corpus)),
            "manifest": {k: len(v) for k, v in expected.items()}, "tools": results}


def summarize_detection(parsed, corpus, manifest, expected) -> dict:
    if "na" in parsed:
        return {"na": parsed["na"]}
    flagged, other_flagged = attribute(parsed["flagged"], corpus, manifest)
    errored, _ = attribute(parsed["errors"], corpus, manifest)
    d = {}
    for k, rows in expected.items():
        d[f"{k}_flagged"] = sorted(set(rows) & flagged)
        d[f"{k}_errors"] = sorted((set(rows) & errored) - flagged)
    d["malicious_missed"] = sorted(set(expected["malicious"]) - flagged)
    d["other_flagged"] = sorted(other_flagged)
    d["notes"] = parsed["notes"]
    return d


def finish(entry: dict) -> None:
    runs = entry["runs"]
    ok = [r for r in runs if not r["timed_out"]]
    entry["median_s"] = statistics.median(r["wall_s"] for r in ok) if ok else None
    entry["median_cpu_s"] = statistics.median(r["user_s"] + r["sys_s"] for r in ok) if ok else None
    rss = [r["peak_rss_mb"] for r in [*runs, entry.get("rss_run") or {}] if r.get("peak_rss_mb") is not None]
    entry["peak_rss_mb"] = max(rss) if rss else None
    entry["rcs"] = sorted({r["rc"] for r in runs})
    # usable as a ratio baseline: every run finished with one of the documented exit codes
    entry["valid"] = bool(ok) and len(ok) == len(runs) and set(entry["rcs"]) <= {0, 1, 2}
    if any("per_file_rcs" in r for r in runs):
        entry["per_file_rcs"] = sorted({k for r in runs for k in r.get("per_file_rcs", {})})
    entry["timeouts"] = sum(r["timed_out"] for r in runs)


def keep_logs(work: Path, name: str) -> None:
    dst = OUT / "logs"
    dst.mkdir(parents=True, exist_ok=True)
    for src, suffix in ((work / "stdout.txt", "stdout"), (work / "stderr.txt", "stderr"),
                        (work / "report.json", "report.json")):
        if src.exists():
            shutil.copyfile(src, dst / f"{name}.{suffix}")


def ensure_big(gib: float) -> tuple[Path, dict]:
    """The cached checkpoint bench/out/big/ckpt-<G>gib.pt, generated if missing."""
    big_dir = OUT / "big"
    big_dir.mkdir(parents=True, exist_ok=True)
    for meta_path in sorted(big_dir.glob("ckpt-*.json")):
        meta = json.loads(meta_path.read_text())
        path = meta_path.with_suffix(".pt")
        if meta.get("requested_gib") == gib and path.exists() and meta.get("size") == path.stat().st_size:
            log(f"big: reusing cached {path} ({meta['size'] / GIB:.2f} GiB)")
            return path, meta
    want = int(gib * GIB)
    headroom = 4 * GIB + 64 * MIB  # the scratch file, and room left for everyone else
    if shutil.disk_usage(big_dir).free < want + headroom:
        for old in big_dir.glob("ckpt-*"):  # other sizes go first when the disk is short
            log(f"big: removing cached {old} to make room")
            old.unlink()
    free = shutil.disk_usage(big_dir).free
    if free < want + headroom:
        want = int(max(0.25 * GIB, (free - headroom) * 0.9))
        log(f"WARNING: only {free / GIB:.1f} GiB free on {big_dir}; scaling the checkpoint "
            f"down from {gib:g} GiB to {want / GIB:.2f} GiB")
        if want + 64 * MIB > free:
            raise SystemExit("not enough disk for even a small checkpoint")
    path = big_dir / f"ckpt-{want / GIB:.2f}gib.pt"
    venv = ensure_venv("torch")
    log(f"big: generating {path} ({want / GIB:.2f} GiB) with torch.save ...")
    t0 = time.time()
    subprocess.run([venv / "bin" / "python", "-c", GEN_PY, str(path), str(want)], check=True,
                   env={**os.environ, **CHILD_ENV})
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    meta = {
        "requested_gib": gib,
        "size": path.stat().st_size,
        "zip_members": len(names),
        "torch": pinned_version("torch", "torch"),
        "generated_s": round(time.time() - t0, 1),
        "layout": "torch.save(state_dict) zip: float32 4096x4096 weights (64 MiB each) + 16-float biases",
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"big: done in {meta['generated_s']} s, {meta['size'] / GIB:.2f} GiB, {len(names)} zip members")
    return path, meta


def evict(path: Path, drop_all: bool) -> str:
    """Make the next read of path come from disk. Default: evict only this file's pages
    (posix_fadvise DONTNEED after sync), which does not disturb other users of the machine.
    With --drop-caches also drop the whole page cache (root only)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if drop_all:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return "drop_caches=3"
        except OSError as e:
            return f"fadvise (drop_caches failed: {e})"
    return "fadvise DONTNEED"


def cached_bytes(path: Path) -> int | None:
    """Bytes of path resident in the page cache, via util-linux fincore when present."""
    exe = shutil.which("fincore")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-b", "-n", "-o", "RES,SIZE", str(path)], capture_output=True,
                             text=True, timeout=30).stdout.split()
        return int(out[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def run_big(runner: Runner, tools: list[str], path: Path, runs: int, modes: list[str], drop_all: bool) -> dict:
    out = {"target": str(path), "size": path.stat().st_size, "runs": runs, "modes": {}}
    for mode in modes:
        results = {t: {"runs": []} for t in tools}
        how = None
        if mode == "warm":
            # one untimed run per tool first, so whatever that tool reads is in the page cache
            # (pre-reading the whole file does not work when it is larger than free memory)
            for t in tools:
                runner.run(t, path, f"big-{mode}-{t}")
        for r in range(runs):
            for t in tools:
                if mode == "cold":
                    how = evict(path, drop_all)
                cached = cached_bytes(path)
                res = runner.run(t, path, f"big-{mode}-{t}")
                res["cached_bytes_before"] = cached
                results[t]["runs"].append(res)
                log(f"big {mode} run {r + 1}/{runs} {t:13s} {res['wall_s']:8.3f} s "
                    f"rc={res['rc']}" + (" TIMEOUT" if res["timed_out"] else "")
                    + (f" (page cache before: {cached / MIB:.1f} MiB of the file)" if cached is not None else ""))
                if r == runs - 1:
                    parsed = runner.parse(t, path, Path(res["work"]))
                    results[t]["verdict"] = big_verdict(parsed, res)
                    keep_logs(Path(res["work"]), f"big-{mode}-{t}")
        for t in tools:  # peak RSS: one more run each, under GNU time, not timed
            if mode == "cold":
                evict(path, drop_all)
            res = runner.run(t, path, f"big-{mode}-{t}", rss=True)
            results[t]["rss_run"] = res
            log(f"big {mode} rss run {t:13s} {res['peak_rss_mb'] or 0:8.1f} MB rc={res['rc']}")
        for t in tools:
            finish(results[t])
        out["modes"][mode] = {"eviction": how if mode == "cold" else "after one untimed warm-up run per tool",
                              "tools": results}
    return out


def big_verdict(parsed: dict, res: dict) -> str:
    if res["timed_out"]:
        return "timeout"
    if "na" in parsed:
        return f"rc={res['rc']} (output n/a)"
    if parsed["flagged"]:
        return "FLAGGED (false positive)"
    if parsed["errors"]:
        return "error/unscannable"
    if res["rc"] not in (0,):
        return f"rc={res['rc']}"
    return "clean"


# --------------------------------------------------------------------------- tables


def fmt_s(x):
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def ratio(x, base):
    if x is None or not base:
        return "n/a"
    return f"{x / base:.1f}x" if x / base < 100 else f"{x / base:.0f}x"


def table(rows: list[list[str]], header: list[str]) -> str:
    w = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) if i == 0 or i == 1 else str(c).rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(header), line(["-" * x for x in w]), *map(line, rows)])


def rc_text(e: dict) -> str:
    if "per_file_rcs" in e:
        return "per file: " + ",".join(e["per_file_rcs"])
    return ",".join(map(str, e["rcs"]))


def print_corpus(c: dict, tg_ok: bool) -> None:
    tools = c["tools"]
    base = tools.get("trainguard", {}) if tg_ok else {}
    base = base if base.get("valid") else {}
    m = c["manifest"]
    print(f"\n== corpus: {c['target']} ({c['files']} files; manifest: {m['malicious']} malicious, "
          f"{m['benign']} benign, {m['unknown']} unknown), median of {c['runs']} run(s)")
    hdr = ["tool", "invocation", "median s", "cpu s", "peak MB", "time vs tg", "RSS vs tg",
           f"malicious flagged /{m['malicious']}", f"benign flagged (FP) /{m['benign']}",
           f"unknown flagged /{m['unknown']}", "errors", "exit codes"]
    rows = []
    for t, e in tools.items():
        d = e.get("detection", {})
        if "na" in d or not d:
            det = ["n/a", "n/a", "n/a", "n/a"]
        else:
            errs = len(d["malicious_errors"]) + len(d["benign_errors"]) + len(d["unknown_errors"])
            det = [str(len(d["malicious_flagged"])), str(len(d["benign_flagged"])),
                   str(len(d["unknown_flagged"])), str(errs)]
        rows.append([t, HOW[t], fmt_s(e["median_s"]) + (" T/O" if e["timeouts"] else ""),
                     fmt_s(e["median_cpu_s"]), f"{e['peak_rss_mb']:.0f}", ratio(e["median_s"], base.get("median_s")),
                     ratio(e["peak_rss_mb"], base.get("peak_rss_mb")), *det,
                     rc_text(e)])
    print(table(rows, hdr))
    for t, e in tools.items():
        d = e.get("detection", {})
        if "na" in d:
            print(f"  {t}: per-file attribution n/a: {d['na']}")
            continue
        if d.get("benign_flagged"):
            print(f"  {t}: benign flagged: " + ", ".join(Path(p).name for p in d["benign_flagged"]))
        if d.get("other_flagged"):
            print(f"  {t}: flagged files outside the manifest: " + ", ".join(d["other_flagged"][:6])
                  + (" ..." if len(d["other_flagged"]) > 6 else ""))
        for n in d.get("notes", []):
            print(f"  {t}: {n}")


def print_big(b: dict, tg_ok: bool) -> None:
    print(f"\n== big checkpoint: {b['target']} ({b['size'] / GIB:.2f} GiB), median of {b['runs']} run(s)")
    for mode, md in b["modes"].items():
        tools = md["tools"]
        base = tools.get("trainguard", {}) if tg_ok else {}
        base = base if base.get("valid") else {}
        print(f"-- {mode} page cache ({md['eviction']})")
        hdr = ["tool", "invocation", "median s", "cpu s", "peak MB", "time vs tg", "RSS vs tg", "result", "exit codes"]
        rows = [[t, HOW[t].replace(", dir", ", file"), fmt_s(e["median_s"]) + (" T/O" if e["timeouts"] else ""),
                 fmt_s(e["median_cpu_s"]), f"{e['peak_rss_mb']:.0f}", ratio(e["median_s"], base.get("median_s")),
                 ratio(e["peak_rss_mb"], base.get("peak_rss_mb")), e.get("verdict", "?"),
                 rc_text(e)] for t, e in tools.items()]
        print(table(rows, hdr))
    if tg_ok:
        for mode, md in b["modes"].items():
            tg = md["tools"].get("trainguard")
            if tg and tg["median_s"] is not None and tg.get("valid"):
                ok = tg["median_s"] < 0.1 and tg["peak_rss_mb"] < 50
                print(f"  target trainguard < 0.1 s and < 50 MB, {mode}: {'MET' if ok else 'NOT MET'} "
                      f"({tg['median_s']:.3f} s, {tg['peak_rss_mb']:.1f} MB)")


# --------------------------------------------------------------------------- main


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
        info["loadavg_start"] = os.getloadavg()
    except (OSError, ValueError):
        pass
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run per tool, 1 GiB checkpoint")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS),
                    help=f"comma-separated subset of {','.join(ALL_TOOLS)} (default: all)")
    ap.add_argument("--runs", type=int, default=None, help="runs per tool and section (default 3; --quick 1)")
    ap.add_argument("--corpus", type=Path, default=Path("/work/shared/corpus"))
    ap.add_argument("--big-gb", type=float, default=None, help="checkpoint size in GiB (default 10; --quick 1)")
    ap.add_argument("--sections", default="corpus,big", help="corpus,big (default both)")
    ap.add_argument("--modes", default="cold,warm", help="page-cache modes for the big file (default cold,warm)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold runs also write 3 to /proc/sys/vm/drop_caches (whole machine; root)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per invocation before SIGKILL (default 900)")
    ap.add_argument("--tg-args", default="scan --format json",
                    help="trainguard arguments before the path (default: 'scan --format json')")
    ap.add_argument("--setup-only", action="store_true", help="create the venvs (and checkpoint) and exit")
    ap.add_argument("--json", type=Path, default=OUT / "scan.json", help="output file (default bench/out/scan.json)")
    args = ap.parse_args()

    runs = args.runs or (1 if args.quick else 3)
    big_gb = args.big_gb or (1.0 if args.quick else 10.0)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad:
        ap.error(f"unknown tool(s) {bad}; choose from {ALL_TOOLS}")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if sys.version_info < (3, 10):
        ap.error("needs Python >= 3.10 (the peers do)")

    runner = Runner(args)
    OUT.mkdir(parents=True, exist_ok=True)
    tg_ok, tg_skipped = False, None
    if "trainguard" in tools:
        probe = None
        if (args.corpus / "manifest.csv").exists():
            first = next(iter(load_manifest(args.corpus)), None)
            probe = args.corpus / first if first else None
        tg_ok, why = tg_usable(runner, probe)
        if not tg_ok:
            log(f"WARNING: skipping trainguard: {why}; ratios will be n/a")
            tools.remove("trainguard")
            tg_skipped = why
    for v in sorted({VENV_OF[t] for t in tools if t in VENV_OF}):
        ensure_venv(v)

    report = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "tools": {}, "corpus": None, "big": None}
    for t in tools:
        if t == "trainguard":
            v = subprocess.run([runner.tg, "--version"], capture_output=True, text=True).stdout.strip()
            report["tools"][t] = {"version": v, "path": str(runner.tg), "how": HOW[t]}
        else:
            pkg = {"fickling-api": "fickling", "modelaudit-core": "modelaudit"}.get(t, t)
            report["tools"][t] = {"version": pinned_version(VENV_OF[t], pkg), "how": HOW[t],
                                  "venv": str(VENVS / VENV_OF[t])}
    if tg_skipped:
        report["tools"]["trainguard"] = {"skipped": tg_skipped}
        print(f"trainguard skipped (ratios n/a): {tg_skipped}")
    big_path = None
    if "big" in sections:
        big_path, report["big_meta"] = ensure_big(big_gb)
    if args.setup_only:
        return 0

    if "corpus" in sections:
        if not (args.corpus / "manifest.csv").exists():
            ap.error(f"{args.corpus}/manifest.csv not found")
        report["corpus"] = run_corpus(runner, tools, args.corpus, runs)
        # a trainguard that ran but produced nothing parseable is not a baseline
        if tg_ok and "na" in report["corpus"]["tools"]["trainguard"].get("detection", {}):
            log("WARNING: trainguard's corpus output could not be parsed; ratios still use its time")
        write_json(report, args.json)
        print_corpus(report["corpus"], tg_ok)
    if "big" in sections:
        report["big"] = run_big(runner, tools, big_path, runs, modes, args.drop_caches)
        write_json(report, args.json)
        print_big(report["big"], tg_ok)
    report["machine"]["loadavg_end"] = os.getloadavg()
    write_json(report, args.json)
    stamp = report["machine"]["date_utc"].replace(":", "").replace("-", "")
    write_json(report, OUT / "history" / f"scan-{stamp}.json")  # a --quick run must not erase a full one
    print(f"\nload average (1/5/15 min) at start {fmt_load(report['machine'].get('loadavg_start'))}, "
          f"at end {fmt_load(report['machine']['loadavg_end'])} on {os.cpu_count()} CPUs")
    print("versions: " + ", ".join(f"{t} {i.get('version', 'skipped')}" for t, i in report["tools"].items()))
    print(f"json: {args.json}")
    return 0


def fmt_load(x) -> str:
    return "/".join(f"{v:.1f}" for v in x) if x else "?"


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=False, default=sorted) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
