"""Tests of trainguard.watch: the update check, fingerprints, RNG hashes, spooling; data-parallel
runs simulated in this process (a clean 2,000-step run, a tampered weight) and one replay
scenario end to end, against the real collector binary."""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from support import closed_port, small_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# scripts/test-python names the binary cargo built (it honours CARGO_TARGET_DIR).
BINARY = Path(os.environ.get("TRAINGUARD_BIN", ROOT / "target" / "debug" / "trainguard"))


# The installed package's module (scripts/test-python installs it); `trainguard.watch` itself is
# the function, so the module is fetched from the import system.
tw = importlib.import_module("trainguard.watch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spooled_steps(path: Path) -> list[dict]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["type"] == "step"]


def _train(model, opt, steps, tmp_path, name, *, run=None, rank=0, world_size=1, data_seed=1, after_step=None,
           **kw):
    """Train `steps` steps under a watch whose collector is down; return the spooled step events."""
    spool = tmp_path / f"{name}.jsonl"
    w = tw.watch(
        model, opt, run=run or f"t-{name}", collector=f"http://127.0.0.1:{closed_port()}", token="t",
        rank=rank, world_size=world_size, spool=spool, flush_s=0.01, **kw,
    )
    gen = torch.Generator().manual_seed(data_seed)
    for step in range(1, steps + 1):
        x = torch.randn(8, 16, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.log(loss=loss)
        if after_step is not None:
            after_step(step)
    assert w.close(timeout=0.3) is False  # nothing could be delivered: all of it is in the spool
    return _spooled_steps(spool)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd-momentum-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd-momentum-dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-wd-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_cosine_is_plus_one_for_honest_steps(name, tmp_path):
    model = small_model()
    steps = _train(model, OPTIMIZERS[name](model.parameters()), 6, tmp_path, name, sample=200)
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        u = s["update"]
        assert u["cosine"] > 0.999, (name, s["step"], u)
        assert u["update_norm"] == pytest.approx(u["expected_norm"], rel=1e-3)
        assert u["dot"] > 0


@pytest.mark.parametrize("host", [True, False])
def test_adam_reference_follows_a_parameter_that_skipped_a_step(host, tmp_path, monkeypatch):
    # A parameter without a gradient at step 1 is skipped by Adam, so from then on its step count
    # (and bias correction) lags the others': the reference must use each one's own count.
    monkeypatch.setattr(tw, "_USE_NUMPY", host)
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    calls = {"n": 0}

    def drop_one_grad(o, args, kwargs):  # registered before watch(): runs before its pre-hook
        calls["n"] += 1
        if calls["n"] == 1:
            model[0].weight.grad = None  # the largest tensor: a wrong count would show

    opt.register_step_pre_hook(drop_one_grad)
    steps = _train(model, opt, 5, tmp_path, f"skip-{host}")
    assert "update" not in steps[0]  # no exact reference at the step that skipped a parameter
    counts = {float(opt.state[p]["step"]) for p in model.parameters()}
    assert counts == {4.0, 5.0}
    for s in steps[1:]:
        assert s["update"]["cosine"] > 0.999, s
        assert s["update"]["update_norm"] == pytest.approx(s["update"]["expected_norm"], rel=1e-3)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_flipped_update_gives_cosine_minus_one(name, tmp_path):
    model = small_model()
    opt = OPTIMIZERS[name](model.parameters())
    saved = {}

    # Hooks registered before watch() run before its hooks, like an edited optimizer.step would.
    def pre(o, args, kwargs):
        saved["before"] = [p.detach().clone() for p in model.parameters()]

    def post(o, args, kwargs):
        with torch.no_grad():
            for p, b in zip(model.parameters(), saved["before"]):
                p.copy_(2 * b - p)

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    steps = _train(model, opt, 4, tmp_path, f"flip-{name}")
    for s in steps:
        assert s["update"]["cosine"] < -0.999, s["update"]


@pytest.mark.parametrize("section", ["optimizer", "interval"])
def test_a_sleep_raises_the_wall_time_of_its_section(section, tmp_path):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    count = {"n": 0}

    def slow_step(o, args, kwargs):  # inside the optimizer step (runs before watch's post-hook)
        count["n"] += 1
        if count["n"] == 3:
            time.sleep(0.1)

    def slow_loop(step):  # outside the optimizer step, between steps 5 and 6
        if step == 5:
            time.sleep(0.1)

    opt.register_step_post_hook(slow_step)
    steps = _train(model, opt, 8, tmp_path, f"sleep-{section}", section=section, after_step=slow_loop)
    wall = {s["step"]: s["wall_s"] for s in steps}
    assert wall[3] >= 0.1  # both sections contain the optimizer step
    if section == "optimizer":
        assert wall[6] < 0.1  # the sleep between steps is not the rank's optimizer time
    else:
        assert wall[6] >= 0.1
    assert all(s["device_s"] is None for s in steps)


def test_fingerprint_is_bitwise():
    x = torch.randn(1000)
    assert tw.fingerprint(x) == tw.fingerprint(x.clone())
    y = x.clone()
    y[123] = torch.nextafter(y[123], torch.tensor(float("inf")))  # one ulp
    assert tw.fingerprint(x) != tw.fingerprint(y)
    assert tw.fingerprint(torch.tensor([0.0])) != tw.fingerprint(torch.tensor([-0.0]))
    # the same values at other positions are another model
    assert tw.fingerprint(x[:2]) != tw.fingerprint(x[:2].flip(0))
    assert len(tw.fingerprint(x.double())) == 16 and len(tw.fingerprint(x.half())) == 16
    assert tw.fingerprint(x.half()) != tw.fingerprint(x.half().neg())


def _replicas(tmp_path, name, steps, tamper, *, make=None, lr=1e-2, **kw):
    """Two replicas of one run trained on the same data; `tamper(step, model)` runs on rank 1 after
    each of its steps. Returns both ranks' step events."""
    make = make or (lambda: small_model(seed=3))
    events = []
    for rank in (0, 1):
        model = make()
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        after = (lambda step, m=model: tamper(step, m)) if rank == 1 else None
        events.append(_train(model, opt, steps, tmp_path, f"{name}-{rank}", run=name, rank=rank, world_size=2,
                             after_step=after, **kw))
    return events


def _differing_steps(a, b, field="param_fingerprint"):
    assert [e["step"] for e in a] == [e["step"] for e in b]
    return [e["step"] for e, f in zip(a, b) if e[field] != f[field]]


@pytest.mark.parametrize("where", ["first", "middle", "last", "one-ulp"])
def test_one_changed_weight_shows_at_the_first_step_after_it(where, tmp_path):
    # Whatever the element, with tiny update-check windows and no positional slices: the word sums
    # of every parameter at every step are what catches it.
    def tamper(step, model):
        if step != 5:
            return
        with torch.no_grad():
            w = model[2].weight.view(-1)
            i = {"first": 0, "middle": 61, "last": w.numel() - 1, "one-ulp": 7}[where]
            if where == "one-ulp":
                w[i] = torch.nextafter(w[i], torch.tensor(float("inf")))
            else:
                w[i] += 1e-3

    a, b = _replicas(tmp_path, f"one-{where}", 8, tamper, sample=4, full_every=0)
    assert _differing_steps(a, b) == [6, 7, 8]


def test_a_permutation_inside_a_tensor_shows_within_full_every_steps(tmp_path):
    # Swapping two float32 elements that sit in the same half of their 64-bit words keeps every
    # word sum. In training the swap also changes the next update, which the sums do see; with
    # lr=0 nothing else changes, and only the positional slices (one 1/full_every of the model
    # per step) can see it.
    def tamper(step, model):
        if step == 5:
            with torch.no_grad():
                w = model[0].weight.view(-1)
                w[[4, 200]] = w[[200, 4]]

    a, b = _replicas(tmp_path, "perm-off", 12, tamper, lr=0.0, full_every=0)
    assert _differing_steps(a, b) == []  # the limit of sums, written down
    a, b = _replicas(tmp_path, "perm-on", 12, tamper, lr=0.0, full_every=4)
    differing = _differing_steps(a, b)
    assert differing and 6 <= differing[0] <= 5 + 4, differing


def test_fingerprint_covers_model_buffers_at_every_step(tmp_path):
    def make():
        torch.manual_seed(4)
        return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))

    def tamper(step, model):
        if step == 2:  # after step 2's fingerprint: only the buffer differs from then on
            with torch.no_grad():
                model[1].running_var[3] = 1e-6

    a, b = _replicas(tmp_path, "buf", 4, tamper, make=make, full_every=0)
    assert _differing_steps(a, b) == [3, 4]


def test_buffers_are_left_out_for_a_ddp_model_that_broadcasts_them(tmp_path):
    # Under DDP each rank's forward updates batch-norm statistics from its own shard, so replicas
    # differ there at the optimizer step by design (rank 0's are broadcast at the next forward).
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{closed_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(4)
        model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        ddp = DDP(model)
        assert tw._Tracked(opt, model, host=True).buffers  # the bare module: buffers included
        assert tw._Tracked(opt, ddp, host=True).buffers == []
        assert tw._Tracked(opt, DDP(model, broadcast_buffers=False), host=True).buffers
    finally:
        dist.destroy_process_group()


def test_the_device_code_path_agrees_with_the_host_path(tmp_path, monkeypatch):
    # CUDA runs the torch code path (sums and the update check on the device); run it on the CPU
    # and compare, so that it is tested where no GPU is.
    runs = {}
    for host in (True, False):
        monkeypatch.setattr(tw, "_USE_NUMPY", host)
        model = small_model(seed=5)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        runs[host] = _train(model, opt, 6, tmp_path, f"path-{host}", full_every=0)
    for h, d in zip(runs[True], runs[False]):
        assert h["param_fingerprint"] == d["param_fingerprint"], h["step"]
        assert h["update_fingerprint"] == d["update_fingerprint"], h["step"]
        assert h["update"]["cosine"] == pytest.approx(d["update"]["cosine"], abs=1e-5)
        assert d["update"]["cosine"] > 0.999


def test_rng_hash_changes_after_seeding_and_the_call_is_recorded(tmp_path):
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    h0 = tw.rng_hashes()
    torch.manual_seed(1)
    h1 = tw.rng_hashes()
    assert h1["torch_cpu"] != h0["torch_cpu"]
    assert h1["python"] == h0["python"] and h1["numpy"] == h0["numpy"]
    torch.manual_seed(1)
    assert tw.rng_hashes()["torch_cpu"] == h1["torch_cpu"]  # a hash of the state, not of the time
    random.seed(5)
    np.random.seed(5)
    h2 = tw.rng_hashes()
    assert h2["python"] != h1["python"] and h2["numpy"] != h1["numpy"]

    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    line = {}

    def reseed(step):
        if step == 3:
            line["n"] = sys._getframe().f_lineno + 1
            torch.manual_seed(99)

    steps = _train(model, opt, 5, tmp_path, "reseed", after_step=reseed)
    calls = {s["step"]: s.get("seed_calls", []) for s in steps}
    assert calls[1] == calls[2] == calls[3] == calls[5] == []
    assert [(c["api"], c["seed"]) for c in calls[4]] == [("torch.manual_seed", 99)]  # once, not per generator
    assert f"test_watch.py:{line['n']} in reseed" in calls[4][0]["stack"]
    assert steps[2]["rng"]["torch_cpu"] != steps[3]["rng"]["torch_cpu"]


class _Stub(http.server.BaseHTTPRequestHandler):
    """A collector stand-in: registers runs and records every batch with its Authorization header."""

    batches: list[tuple[str, str, list[dict]]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/v1/runs":
            reply, status = {"run": body.get("run"), "token": "tok-from-stub"}, 201
        else:
            _Stub.batches.append((self.path, self.headers.get("Authorization", ""), body["events"]))
            reply, status = {"accepted": len(body["events"])}, 200
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_events_are_spooled_while_the_collector_is_down_and_redelivered(tmp_path):
    port = closed_port()
    spool = tmp_path / "spool.jsonl"
    # left by an earlier process of this run (re-sent first) and by another run (set aside)
    earlier = {"type": "heartbeat", "run": "spooled", "rank": 0, "world_size": 1, "host": "h", "pid": 1,
               "time_unix_s": 1.0}
    spool.write_text(json.dumps(earlier) + "\n" + json.dumps(dict(earlier, run="other")) + "\n")
    _Stub.batches = []
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = tw.watch(model, opt, run="spooled", collector=f"http://127.0.0.1:{port}", spool=spool,
                 flush_s=0.01, heartbeat_s=0.05)
    assert w.token is None  # the collector was down at start: registration is retried later
    for _ in range(10):
        loss = model(torch.randn(4, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.log(loss=loss)
    assert w.flush(timeout=0.5) is False
    assert w.stats()["spooled"] >= 9 and spool.stat().st_size > 0

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert w.flush(timeout=15) is True
        assert w.close(timeout=5) is True
    finally:
        server.shutdown()
        server.server_close()
    assert spool.read_text() == ""
    assert {path for path, _, _ in _Stub.batches} == {"/v1/runs/spooled/events"}
    assert {auth for _, auth, _ in _Stub.batches} == {"Bearer tok-from-stub"}
    events = [e for _, _, batch in _Stub.batches for e in batch]
    assert events[0] == earlier
    assert json.loads((tmp_path / "spool.jsonl.foreign").read_text())["run"] == "other"
    kinds = [e["type"] for e in events[1:]]
    assert kinds[0] == "process_start" and kinds[-1] == "process_exit" and "heartbeat" in kinds
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 11))  # each once, in order
    assert all(isinstance(e["loss"], float) for e in events if e["type"] == "step")
    assert all(e["device_s"] is None for e in events if e["type"] == "step")  # CPU: no device time


def _binary_has_watch() -> tuple[bool, str]:
    if not BINARY.exists():
        return False, f"{BINARY} is not built (cargo build -p trainguard)"
    out = subprocess.run([str(BINARY), "watch", "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        return False, f"{BINARY} has no `watch` verb: {out.stderr.strip()[:200]}"
    return True, ""


def _need_binary() -> None:
    ok, why = _binary_has_watch()
    if not ok:
        # Under scripts/test the binary is always built: missing it there is a failure.
        if os.environ.get("TRAINGUARD_BIN"):
            pytest.fail(why)
        print(f"skipping a test against the real collector: {why}")
        pytest.skip(why)


@pytest.fixture
def collector(tmp_path):
    """`trainguard watch serve` on a free loopback port, for ranks simulated in this process;
    yields its URL.

    The simulated ranks take turns on one thread, so the time of a rank's step says nothing about
    that rank: a pause of the shared machine lands in whichever rank is running, and by chance
    one rank can collect enough of them to be called a straggler. The timing detector is given
    floors these pauses cannot reach; every other detector keeps its defaults. (The replay runs
    real processes with every default.)"""
    _need_binary()
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"outlier_abs_s": 10.0, "slow_median_ratio": 100.0}))
    proc = subprocess.Popen(
        [str(BINARY), "watch", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "watch.db"),
         "--thresholds", str(thresholds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stderr.readline()
    m = re.search(r"listening on (http://\S+)", line)
    try:
        assert m, f"collector did not start: {line!r}"
        yield m.group(1).rstrip("/")
    finally:
        proc.terminate()
        proc.wait(10)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _data_parallel(collector, tmp_path, run, steps, world=4, after_step=None):
    """`world` replicas of one model trained in this process as DistributedDataParallel would train
    them (one data shard each, gradients averaged across replicas before every step), each rank
    watched by its own `watch` reporting to `collector`. Returns the run's incidents."""
    _, token = tw.register_run(collector, run)
    torch.manual_seed(11)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    models = [copy.deepcopy(base) for _ in range(world)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for m in models]
    watches = [
        tw.watch(m, o, run=run, collector=collector, token=token, rank=r, world_size=world,
                 spool=tmp_path / f"{run}.{r}.jsonl", flush_s=0.05)
        for r, (m, o) in enumerate(zip(models, opts))
    ]
    shards = [torch.Generator().manual_seed(100 + r) for r in range(world)]
    w_true = torch.randn(16, 1, generator=torch.Generator().manual_seed(7)) / 4
    for step in range(1, steps + 1):
        losses = []
        for m, o, g in zip(models, opts, shards):
            # Bounded inputs and a target the model can fit: once it has, the batch losses are the
            # label noise's (no heavy tail for the loss-spike detector to find).
            x = torch.rand(64, 16, generator=g) * 2 - 1
            y = x @ w_true + 0.05 * torch.randn(64, 1, generator=g)
            loss = torch.nn.functional.mse_loss(m(x), y)
            o.zero_grad()
            loss.backward()
            losses.append(loss)
        with torch.no_grad():  # the all-reduce: every replica gets the same mean, bit for bit
            for ps in zip(*(m.parameters() for m in models)):
                mean = torch.stack([p.grad for p in ps]).mean(0)
                for p in ps:
                    p.grad.copy_(mean)
        for o, w, loss in zip(opts, watches, losses):
            o.step()
            w.log(loss=loss)
        if after_step is not None:
            after_step(step, models)
    for w in watches:
        assert w.close(timeout=30), w.stats()
    ranks = _get(f"{collector}/v1/runs/{run}/ranks")
    assert sorted((r["rank"], r["last_step"]) for r in ranks) == [(r, steps) for r in range(world)], ranks
    return _get(f"{collector}/v1/runs/{run}/incidents")


def test_a_clean_data_parallel_run_of_2000_steps_raises_no_incident(collector, tmp_path):
    incidents = _data_parallel(collector, tmp_path, "clean-2000", 2000)
    assert incidents == []


def test_one_tampered_weight_on_one_rank_is_replica_divergence_at_the_first_affected_step(collector, tmp_path):
    def tamper(step, models):
        if step == 30:  # after step 30 was reported: step 31 is the first one it affects
            with torch.no_grad():
                models[2][0].weight.view(-1)[-1] += 1e-3

    incidents = _data_parallel(collector, tmp_path, "tamper", 40, after_step=tamper)
    assert incidents, "the tampered weight was not seen"
    first = incidents[0]
    assert (first["detector"], first["rank"], first["step"]) == ("replica_divergence", 2, 31), incidents
    assert {i["rank"] for i in incidents} == {2}, incidents
    fields = {m["field"] for m in first["evidence"]["mismatches"]}
    assert "param_fingerprint" in fields, first


def test_replay_flip_scenario_against_the_real_collector(tmp_path):
    _need_binary()
    out = tmp_path / "replay.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "incident-replay" / "run_replay.py"),
         "--scenario", "flip", "--steps", "15", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())
    flipped = [i for i in result["incidents"] if i["detector"] == "update_flipped"]
    assert flipped and {i["rank"] for i in flipped} == {1}, result
    assert flipped[0]["step"] == 1 and flipped[0]["evidence"]["cosine"] < -0.99
    diverged = [i for i in result["incidents"] if i["detector"] == "replica_divergence"]
    assert diverged and diverged[0]["rank"] == 1
    assert time.monotonic() - started < 300


def test_bad_arguments_are_refused_before_anything_is_hooked():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(tw.WatchError, match="run id"):
        tw.watch(model, opt, run="../etc", token="t")
    with pytest.raises(tw.WatchError, match="not below world_size"):
        tw.watch(model, opt, run="r", token="t", rank=2, world_size=2)
    with pytest.raises(tw.WatchError, match="unknown generators"):
        tw.watch(model, opt, run="r", token="t", rng=["python", "java"])
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_importing_watch_loads_no_torch_yet_records_seeds_once_torch_is_imported():
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("w", {str(ROOT / "python" / "trainguard" / "watch.py")!r})
w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)
assert "torch" not in sys.modules and "numpy" not in sys.modules
import numpy, torch
numpy.random.seed(3)
torch.manual_seed(4)
print([(c["api"], c["seed"]) for c in w._seed_calls_since(0)[0]])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('numpy.random.seed', 3), ('torch.manual_seed', 4)]"
