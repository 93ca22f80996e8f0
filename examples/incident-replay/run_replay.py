#!/usr/bin/env python3
"""Replay the incident's sabotage patterns against the real collector and check what it finds.

Starts `trainguard watch serve` on 127.0.0.1 with a temporary database, runs train.py as a
4-rank DistributedDataParallel job (gloo, CPU) once per scenario, each rank under
`trainguard run` (which reports how the process ended), fetches GET /v1/runs/{run}/incidents
and prints scenario -> incidents (detector, rank, step). Exits 1 when a sabotage scenario has no
matching incident or the clean run has any, 2 on a setup error.

    python examples/incident-replay/run_replay.py                 # every scenario
    python examples/incident-replay/run_replay.py --scenario flip # one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import sabotage  # noqa: E402

# scenario -> (detectors that count as caught, the rank that must be blamed)
EXPECTED: dict[str, tuple[set[str], int | None]] = {
    "clean": (set(), None),
    "sleep": ({"straggler"}, sabotage.SLEEP_RANK),
    "flip": ({"update_flipped"}, sabotage.FLIP_RANK),
    "seed": ({"seed_changed", "rng_divergence"}, sabotage.SEED_RANK),
    "tamper": ({"replica_divergence"}, sabotage.TAMPER_RANK),
    "kill": ({"killed"}, sabotage.KILL_RANK),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class Collector:
    """`trainguard watch serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, binary: Path, db: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "watch", "serve", "--listen", "127.0.0.1:0", "--db", str(db)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"collector did not start: {line!r}")
        self.url = m.group(1).rstrip("/")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def has_verb(binary: Path, verb: str) -> bool:
    out = subprocess.run([str(binary), verb, "--help"], capture_output=True, text=True)
    return out.returncode == 0


def run_scenario(
    name: str, binary: Path, collector: str, world: int, steps: int, tmp: Path, launcher: bool, timeout: float
) -> tuple[str, list[dict], float]:
    run = f"replay-{name}-{int(time.time() * 1000) % 10**9}"
    token = http("POST", f"{collector}/v1/runs", {"run": run})["token"]
    port = free_port()
    procs = []
    logs = []
    t0 = time.monotonic()
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            TRAINGUARD_RUN=run, TRAINGUARD_TOKEN=token, TRAINGUARD_COLLECTOR=collector,
            TRAINGUARD_SPOOL_DIR=str(tmp / "spool"), OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(HERE / "train.py"), "--sabotage", name, "--steps", str(steps)]
        if launcher:
            cmd = [str(binary), "run", "--heartbeat", "1", "--"] + cmd
        log = open(tmp / f"{run}.rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for log in logs:
        log.close()
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # the launchers' last reports
    incidents = http("GET", f"{collector}/v1/runs/{run}/incidents")
    assert isinstance(incidents, list)
    return run, incidents, elapsed


def verdict(name: str, incidents: list[dict]) -> tuple[bool, str]:
    detectors, rank = EXPECTED[name]
    if not detectors:
        return (not incidents, "no incident" if not incidents else "FALSE POSITIVE")
    hit = [i for i in incidents if i["detector"] in detectors and i.get("rank") == rank]
    return (bool(hit), f"caught (rank {rank})" if hit else f"MISSED (wanted {sorted(detectors)} on rank {rank})")


def fmt(incidents: list[dict]) -> str:
    seen: dict[tuple, int] = {}
    for i in incidents:
        key = (i["detector"], i.get("rank"))
        if key not in seen:
            seen[key] = i.get("step")
    if not seen:
        return "-"
    return ", ".join(f"{d}(rank {r}, step {s})" for (d, r), s in seen.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", choices=list(EXPECTED), help="run only these (repeatable)")
    ap.add_argument("--world-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per scenario")
    ap.add_argument("--binary", type=Path, default=Path(os.environ.get("TRAINGUARD_BIN", ROOT / "target/debug/trainguard")))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    if not args.binary.exists() or not has_verb(args.binary, "watch"):
        print(f"error: {args.binary} has no `watch` verb (cargo build -p trainguard)", file=sys.stderr)
        return 2
    launcher = has_verb(args.binary, "run")
    if not launcher:
        print("note: no `trainguard run`; kills are seen only as missing heartbeats", file=sys.stderr)
        EXPECTED["kill"] = ({"killed", "heartbeat_missing"}, sabotage.KILL_RANK)
    if args.world_size <= sabotage.SLEEP_MIN_WORLD:
        # The sleeps switch on only above the threshold: at this size they must stay silent.
        EXPECTED["sleep"] = (set(), None)
    scenarios = args.scenario or list(EXPECTED)

    ok_all = True
    rows = []
    with tempfile.TemporaryDirectory(prefix="tg-replay-") as d:
        tmp = Path(d)
        collector = Collector(args.binary, tmp / "watch.db")
        try:
            for name in scenarios:
                run, incidents, elapsed = run_scenario(
                    name, args.binary, collector.url, args.world_size, args.steps, tmp, launcher, args.timeout
                )
                ok, what = verdict(name, incidents)
                ok_all &= ok
                rows.append((name, what, fmt(incidents), elapsed, incidents))
                print(f"{name:<7} {what:<22} {fmt(incidents)}  [{elapsed:.0f} s]", file=sys.stderr)
        finally:
            collector.stop()

    print(f"\n{'scenario':<9}| {'verdict':<22}| incidents (detector, rank, first step)")
    print(f"{'-' * 9}+{'-' * 23}+{'-' * 50}")
    for name, what, found, _, _ in rows:
        print(f"{name:<9}| {what:<22}| {found}")
    if args.json:
        args.json.write_text(json.dumps([{"scenario": n, "verdict": w, "incidents": i} for n, w, _, _, i in rows], indent=2))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
