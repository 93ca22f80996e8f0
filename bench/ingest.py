#!/usr/bin/env python3
"""Ingestion throughput of `trainguard watch serve` on loopback, with every acknowledged event checked.

    python3 bench/ingest.py                                  # target/release/trainguard, 5 rounds
    python3 bench/ingest.py --binary old=/tmp/tg-old --binary new=target/release/trainguard
    python3 bench/ingest.py --jobs 4 --ranks 16 --batch 50    # more senders, smaller batches

Each round starts a fresh collector (`watch serve --listen 127.0.0.1:0`, a temporary database),
registers `--jobs` runs and gives every rank of every run its own sender thread, which posts
`--batches` batches of `--batch` events (step events shaped like `trainguard.watch` sends them,
plus a heartbeat per batch) one after another, each on a new connection as the Python client's
`urllib` does (`--keep-alive` reuses one). Bodies are built before the clock starts, so the
driver measures the collector, not Python's JSON encoder. events/s = acknowledged events / wall
seconds from the first POST to the last acknowledgement.

After each round the collector is killed with SIGKILL (no graceful shutdown, no chance to flush
anything late) and the database is read back with sqlite3: every acknowledged event must be
there, per run and rank, with the same steps. Any missing event fails the benchmark (exit 1).

Also printed per round: the collector's CPU time per event (user + system from /proc, less
sensitive to a busy machine than wall clock) and the driver's own CPU seconds. With several
`--binary` entries the rounds are interleaved, so load drift hits every binary alike. Standard
library only (Python 3.10+).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Events in one POST from the Python client (`_MAX_BATCH` in python/trainguard/watch.py).
CLIENT_MAX_BATCH = 500


def default_binary() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return os.environ.get("TRAINGUARD") or str(Path(target) / "release" / "trainguard")


# --------------------------------------------------------------------------------------------
# The load: bodies built once, reused by every round (run ids are the same; databases are fresh)
# --------------------------------------------------------------------------------------------


def hexdigits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def build_bodies(jobs: int, ranks: int, batches: int, batch: int, seed: int) -> dict:
    """{(run, rank): [(body bytes, events, sum of step numbers), ...]}.

    Events look like trainguard.watch's: the base fields, a step with wall/device time, loss,
    the update check, parameter and update fingerprints (two 31-bit lanes, 16 hex digits) and
    four RNG hashes (blake2b-16). Replicas of a run agree on fingerprints and RNG hashes at every
    step (a healthy data-parallel job), so the detectors do their normal work and find nothing.
    """
    rng = random.Random(seed)
    out: dict = {}
    steps_per_batch = batch - 1  # plus one heartbeat
    for j in range(jobs):
        run = f"bench-{j}"
        shared = {}  # step -> replica-agreed hashes
        for rank in range(ranks):
            base = {
                "run": run,
                "rank": rank,
                "world_size": ranks,
                "host": f"gpu-node-{rank // 8:03d}",
                "pid": 40_000 + rank,
                "user": "trainer",
            }
            bodies = []
            step = 0
            t = 1.7e9
            for _ in range(batches):
                events = []
                step_sum = 0
                for _ in range(steps_per_batch):
                    step += 1
                    t += 0.25
                    if step not in shared:
                        shared[step] = (
                            hexdigits(rng, 16),
                            hexdigits(rng, 16),
                            {g: hexdigits(rng, 32) for g in ("python", "numpy", "torch_cpu", "torch_cuda")},
                            rng.uniform(1.5, 3.0),
                        )
                    fp, ufp, rng_hashes, loss = shared[step]
                    wall = 0.25 + rng.gauss(0, 0.002)
                    e = dict(base)
                    e.update(
                        {
                            "time_unix_s": t,
                            "type": "step",
                            "step": step,
                            "wall_s": wall,
                            "device_s": wall - 0.01,
                            "rng": rng_hashes,
                            "param_fingerprint": fp,
                            "update_fingerprint": ufp,
                            "update": {
                                "dot": 0.0123,
                                "cosine": 0.999 - rng.random() * 0.01,
                                "update_norm": 0.111,
                                "expected_norm": 0.112,
                            },
                            "loss": loss + rng.gauss(0, 0.01),
                        }
                    )
                    events.append(e)
                    step_sum += step
                hb = dict(base)
                hb.update({"time_unix_s": t, "type": "heartbeat", "step": step})
                events.append(hb)
                step_sum += step
                data = json.dumps({"events": events}, allow_nan=False, separators=(",", ":")).encode()
                bodies.append((data, len(events), step_sum))
            out[(run, rank)] = bodies
    return out


# --------------------------------------------------------------------------------------------
# One round
# --------------------------------------------------------------------------------------------


@dataclass
class Round:
    events: int
    seconds: float
    server_cpu_s: float
    driver_cpu_s: float
    incidents: int
    batches: int
    commits: int | None  # None: the collector does not export trainguard_store_commits_total
    errors: list = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process (fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_collector(binary: str, db: Path) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [binary, "watch", "serve", "--listen", "127.0.0.1:0", "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"listening on http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"{binary}: collector did not start: {line!r}{proc.stderr.read()}")
    # Drain stderr so a chatty collector can never block on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, m.group(1), int(m.group(2))


def request(host: str, port: int, method: str, path: str, body: bytes, token: str | None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if own:
        headers["Connection"] = "close"  # what urllib sends
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if own:
        conn.close()
    return resp.status, data


def one_round(binary: str, bodies: dict, keep_alive: bool, perf: Path | None = None,
              stop: signal.Signals = signal.SIGKILL) -> Round:
    """One collector, every body sent; then the collector is stopped with `stop` (SIGKILL for
    the benchmark; scripts/pgo-train stops it with SIGTERM, so that it exits and writes its
    profile) and the database is checked against what was acknowledged."""
    with tempfile.TemporaryDirectory(prefix="tg-ingest-") as tmp:
        db = Path(tmp) / "watch.db"
        proc, host, port = start_collector(binary, db)
        try:
            tokens = {}
            for run in sorted({run for run, _ in bodies}):
                status, data = request(host, port, "POST", "/v1/runs", json.dumps({"run": run}).encode(), None)
                if status != 201:
                    raise SystemExit(f"registration of {run} failed: HTTP {status} {data[:200]!r}")
                tokens[run] = json.loads(data)["token"]

            acked: dict = {key: [0, 0] for key in bodies}  # (run, rank) -> [events, step sum]
            errors: list = []
            start = threading.Barrier(len(bodies) + 1)

            def sender(key):
                run, _ = key
                conn = http.client.HTTPConnection(host, port, timeout=60) if keep_alive else None
                start.wait()
                for data, n, step_sum in bodies[key]:
                    try:
                        status, reply = request(host, port, "POST", f"/v1/runs/{run}/events", data, tokens[run], conn)
                        accepted = json.loads(reply).get("accepted") if status == 200 else None
                    except (OSError, http.client.HTTPException, ValueError) as e:
                        errors.append(f"{key}: {e!r}")
                        return
                    if accepted != n:
                        errors.append(f"{key}: HTTP {status} {reply[:200]!r}")
                        return
                    acked[key][0] += n
                    acked[key][1] += step_sum

            threads = [threading.Thread(target=sender, args=(key,)) for key in bodies]
            for t in threads:
                t.start()
            profiler = None
            if perf:
                profiler = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "--call-graph", os.environ.get("PERF_CALL_GRAPH", "fp"), "-q", "-o", str(perf), "-p", str(proc.pid)],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(0.5)
            cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
            cpu1, own1 = cpu_seconds(proc.pid), time.process_time()
            if profiler:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
            status, data = request(host, port, "GET", "/metrics", b"", None)
            counters = dict(
                line.rsplit(" ", 1) for line in data.decode().splitlines() if line and not line.startswith("#")
            )
            batches = int(counters.get("trainguard_ingest_batches_total", 0))
            commits = counters.get("trainguard_store_commits_total")
        finally:
            # SIGKILL (the default): what was acknowledged must already be on disk.
            proc.send_signal(stop)
            proc.wait()

        con = sqlite3.connect(db)
        stored = {
            (run, rank): [n, s]
            for run, rank, n, s in con.execute(
                "SELECT run, rank, count(*), sum(json_extract(body, '$.step')) FROM events GROUP BY run, rank"
            )
        }
        incidents = con.execute("SELECT count(*) FROM incidents").fetchone()[0]
        con.close()
        for key, (n, s) in acked.items():
            got = stored.get(key, [0, 0])
            if got != [n, s]:
                errors.append(f"{key}: acknowledged {n} events (step sum {s}), stored {got[0]} (step sum {got[1]})")
        total = sum(n for n, _ in acked.values())
        return Round(total, seconds, cpu1 - cpu0, own1 - own0, incidents, batches,
                     None if commits is None else int(commits), errors)


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", default=[], metavar="[LABEL=]PATH",
                    help="trainguard binary (repeatable; default $TRAINGUARD or target/release/trainguard)")
    ap.add_argument("--jobs", type=int, default=2, help="runs registered (default 2)")
    ap.add_argument("--ranks", type=int, default=8, help="ranks per run, one sender each (default 8)")
    ap.add_argument("--batches", type=int, default=20, help="batches per rank per round (default 20)")
    ap.add_argument("--batch", type=int, default=CLIENT_MAX_BATCH,
                    help=f"events per batch (default {CLIENT_MAX_BATCH}, the Python client's largest)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per binary; the median is reported (default 5)")
    ap.add_argument("--keep-alive", action="store_true", help="one connection per sender instead of one per POST")
    ap.add_argument("--target", type=float, default=100_000.0, help="events/s to meet (default 100000)")
    ap.add_argument("--json", type=Path, help="write every round's numbers here")
    ap.add_argument("--perf", type=Path, metavar="FILE",
                    help="profile the collector of the first round with `perf record -e cpu-clock` into FILE "
                    "(call graphs from frame pointers; PERF_CALL_GRAPH=dwarf,16384 to see Rust frames)")
    args = ap.parse_args()
    if args.batch < 2:
        ap.error("--batch must be at least 2 (steps plus one heartbeat)")

    binaries = []
    for spec in args.binary or [default_binary()]:
        label, _, path = spec.rpartition("=")
        path = str(Path(path).resolve())
        if not Path(path).exists():
            ap.error(f"{path} does not exist (cargo build --release -p trainguard)")
        binaries.append((label or Path(path).name, path))

    t = time.perf_counter()
    bodies = build_bodies(args.jobs, args.ranks, args.batches, args.batch, seed=1)
    size = sum(len(b) for v in bodies.values() for b, _, _ in v)
    events = sum(n for v in bodies.values() for _, n, _ in v)
    print(
        f"load: {args.jobs} runs x {args.ranks} ranks = {len(bodies)} senders, {args.batches} batches of "
        f"{args.batch} events each: {events} events, {size / events:.0f} bytes/event, "
        f"{'keep-alive' if args.keep_alive else 'a connection per POST'} (built in {time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)

    results: dict = {label: [] for label, _ in binaries}
    failed = False
    for r in range(args.rounds):
        for label, path in binaries:
            perf = args.perf if r == 0 and label == binaries[0][0] else None
            res = one_round(path, bodies, args.keep_alive, perf)
            results[label].append(res)
            print(
                f"round {r + 1} {label}: {res.rate:>9.0f} events/s ({res.events} in {res.seconds:.2f} s), "
                f"collector {1e6 * res.server_cpu_s / max(res.events, 1):.2f} us CPU/event, "
                f"driver {res.driver_cpu_s:.2f} s CPU, {res.incidents} incidents, "
                f"{'n/a' if res.commits is None else f'{res.batches / max(res.commits, 1):.1f}'} batches/commit",
                flush=True,
            )
            for e in res.errors:
                failed = True
                print(f"  LOST OR FAILED: {e}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    print(f"\n| binary | events/s (median of {args.rounds}) | min | max | collector CPU us/event | target {args.target:.0f} |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, rounds in results.items():
        rates = [x.rate for x in rounds]
        cpu = statistics.median(1e6 * x.server_cpu_s / max(x.events, 1) for x in rounds)
        med = statistics.median(rates)
        verdict = "MET" if med >= args.target else "NOT MET"
        print(f"| {label} | {med:.0f} | {min(rates):.0f} | {max(rates):.0f} | {cpu:.2f} | {verdict} |")
    print("every acknowledged event was found in the database after SIGKILL" if not failed
          else "SOME ACKNOWLEDGED EVENTS WERE MISSING OR POSTS FAILED")
    if args.json:
        args.json.write_text(json.dumps(
            {label: [vars(x) | {"rate": x.rate} for x in rounds] for label, rounds in results.items()}, indent=1
        ))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
