"""The pass over the weights on two threads (`trainguard._native.WordSums` with its worker
thread): the same bytes as on one thread and as NumPy's definition, whatever the shapes, word
widths and plans; when it is used; a process forked after the worker started; and a watch whose
pass is shared giving replicas the same fingerprints as one whose pass is not."""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from support import closed_port  # noqa: E402

from trainguard import _native  # noqa: E402
from trainguard._native import WordSums  # noqa: E402

tw = importlib.import_module("trainguard.watch")

M64 = (1 << 64) - 1
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numpy_sums(words: list) -> bytes:
    """The definition: NumPy's wrap-around sum in the words' own width, as `int & 2**64-1`."""
    return b"".join((int(np.add.reduce(w, 0, w.dtype)) & M64).to_bytes(8, "little") for w in words)


def _words(seed: int, dtype, sizes: list[int]) -> list:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return [rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True) for n in sizes]


def _plans(data: list, seed: int) -> list[list[tuple[int, int, int]]]:
    """A slice across tensor boundaries and a few windows, as byte ranges."""
    rng = np.random.default_rng(seed)
    sizes = [d.nbytes for d in data]
    windows = []
    for i in rng.choice(len(data), size=min(6, len(data)), replace=False):
        lo = int(rng.integers(0, sizes[i] + 1))
        windows.append((int(i), lo, int(rng.integers(lo, sizes[i] + 1))))
    return [[(i, 0, n) for i, n in enumerate(sizes[:3])], windows, []]


# Sizes in elements: empty, shorter than a lane block, not a multiple of 8, around the 128 KiB
# items and several MiB, and runs of small tensors that share items.
SHAPES = {
    "large": [3_000_001, 1 << 17, (1 << 17) + 3, 0, 1, 7, 9],
    "many-small": [13, 64, 0, 4099, 1000, 31] * 40 + [1 << 20],
    "one-huge": [5_000_003],
}


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_two_threads_give_the_bytes_of_one_and_of_numpy(dtype, shape):
    words = _words(len(shape), dtype, SHAPES[shape])
    words.append(np.full(70_001, np.iinfo(dtype).max, dtype=dtype))  # wraps around many times
    words.append(np.full(70_001, np.iinfo(dtype).min, dtype=dtype))
    data = [w.view(np.uint8) for w in words]
    plans = _plans(data, seed=1)
    one = WordSums(words, data, plans, threads=1)
    two = WordSums(words, data, plans, threads=2)
    assert one.threads == 1 and two.threads == 2
    expected = _numpy_sums(words)
    copies = b"".join(data[i][lo:hi].tobytes() for plan in plans[:2] for i, lo, hi in plan)
    assert one.sums() == expected
    assert one.sums(0, 1) == expected + copies
    shared = []
    for _ in range(20):  # different interleavings of the two threads
        assert two.sums(0, 1) == expected + copies
        shared.append(two.worker_bytes)
    assert two.sums() == expected
    assert one.worker_bytes == 0
    assert two.copy(1) == one.copy(1)
    if CPUS > 1:
        # The worker takes items whenever it wakes before the caller has taken them all: on a
        # loaded machine that may take a while.
        deadline = time.monotonic() + 10
        while not any(shared) and time.monotonic() < deadline:
            assert two.sums() == expected
            shared.append(two.worker_bytes)
        assert any(shared)
        assert all(0 <= b <= two.nbytes for b in shared)


@pytest.mark.parametrize("defer", [None, 0, 1, 4, 7])
def test_a_posted_pass_collected_later_gives_the_bytes_of_sums_and_is_settled_if_never_taken(defer):
    # `post()` reads tensors `defer..` now and hands `0..defer` (sums and plan bytes) to the
    # worker; `collect()` returns what `sums()` would have, whoever read what.
    words = _words(5, np.int64, SHAPES["large"])
    data = [w.view(np.uint8) for w in words]
    plans = _plans(data, seed=2)
    one = WordSums(words, data, plans, threads=1, defer=defer)
    two = WordSums(words, data, plans, threads=2, defer=defer)
    other = WordSums(words, data, plans, threads=2, defer=defer)
    expected = one.sums(0, 1)
    assert one.post(0, 1) is False  # one thread: everything is read at `post()`
    assert one.collect() == expected
    for _ in range(10):
        assert two.post(0, 1) is True
        time.sleep(0.001)  # the worker sums meanwhile
        assert two.collect() == expected
    assert two.post(1) is True
    assert two.collect() == expected[:8 * len(words)] + expected[len(one.sums(0)):]
    # Posted twice: the first pass is dropped, the second collected.
    two.post()
    two.post(0, 1)
    assert two.collect() == expected
    with pytest.raises(ValueError, match="collect\\(\\) without post\\(\\)"):
        two.collect()
    # Another object's pass while this one's is in flight: the worker is busy, so that one reads
    # everything at its `post()`, and this one still gets its own.
    assert two.post(0, 1) is True
    assert other.post(0, 1) is False
    assert other.collect() == expected
    assert two.sums(0, 1) == expected  # `sums()` meanwhile reads alone
    assert two.collect() == expected
    # Never collected: the pass is settled when its object goes, and the worker is free again.
    third = WordSums(words, data, plans, threads=2, defer=defer)
    assert third.post(0, 1) is True
    del third
    assert two.post(0, 1) is True
    assert two.collect() == expected


def test_collect_fresh_reads_the_deferred_tensors_as_they_are_now():
    words = _words(6, np.int64, [1 << 18, 1000, 1 << 17])
    data = [w.view(np.uint8) for w in words]
    plans = [[(0, 0, 64), (2, 8, 72)]]
    for threads in (1, 2):
        ws = WordSums(words, data, plans, threads=threads, defer=2)
        before = ws.sums(0)
        for fresh in (False, True):
            ws.post(0)
            # Deferred: seen only by a fresh collect (the worker reads it at some point after
            # `post()`: only a pass read at `post()` is sure not to see it unless fresh).
            if fresh or threads == 1:
                words[0][3] += 1
            words[2][4] += 1  # read at `post()`: not seen either way
            got = ws.collect(fresh)
            now = WordSums(words, data, plans, threads=1).sums(0)
            n8 = 8 * len(words)
            assert got[8:16] == before[8:16]
            assert got[16:24] == before[16:24]  # tensor 2 as at `post()`
            assert got[:8] == (now[:8] if fresh else before[:8])
            assert got[n8:n8 + 64] == (now if fresh else before)[n8:n8 + 64]
            assert got[n8 + 64:] == before[n8 + 64:]
            words[2][4] -= 1
            before = WordSums(words, data, plans, threads=1).sums(0)


def test_tensor_words_of_every_dtype_sum_alike_on_two_threads():
    # The CUDA path sums the same words with torch: the same bytes on one thread, two, and torch.
    gen = torch.Generator().manual_seed(2)
    tensors = [
        torch.randn(700_001, generator=gen),
        torch.randn(300, 1001, generator=gen).half(),
        torch.randn(99_999, generator=gen).double(),
        torch.randn(200_003, generator=gen).bfloat16(),
        torch.randint(0, 255, (1_000_003,), generator=gen, dtype=torch.uint8),
        torch.randn(3, generator=gen).half(),
    ]
    words = [tw._sum_words(t) for t in tensors]
    arrays = [w.numpy() for w in words]
    data = [w.view(torch.uint8).numpy() for w in words]
    device = torch.stack([
        (w.sum() if w.dtype == torch.int64 else w.sum(dtype=w.dtype)).to(torch.int64) for w in words
    ]).numpy().tobytes()
    assert WordSums(arrays, data, threads=1).sums() == device
    two = WordSums(arrays, data, threads=2)
    assert all(two.sums() == device for _ in range(10))
    # The views read the memory as it is now, on both threads.
    tensors[0][123_457] += 1.0
    assert two.sums() != device
    assert two.sums() == WordSums(arrays, data, threads=1).sums()


def test_when_the_pass_is_shared():
    small = _words(3, np.int64, [1000] * 8)
    large = _words(4, np.int32, [1 << 19])  # 2 MiB
    assert WordSums(small, [w.view(np.uint8) for w in small]).threads == 1
    assert WordSums(large, [w.view(np.uint8) for w in large]).threads == (2 if CPUS > 1 else 1)
    assert WordSums(large, [w.view(np.uint8) for w in large], threads=1).threads == 1
    assert WordSums(small, [w.view(np.uint8) for w in small], threads=2).threads == 2
    with pytest.raises(ValueError, match="threads must be 1, 2 or None, not 3"):
        WordSums(small, [w.view(np.uint8) for w in small], threads=3)
    thread = _native.sums_worker_thread()
    assert isinstance(thread, int)
    if hasattr(time, "pthread_getcpuclockid"):
        assert time.clock_gettime(time.pthread_getcpuclockid(thread)) >= 0.0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_process_on_one_cpu_sums_on_one_thread(tmp_path):
    # In a fresh interpreter (the worker of this one is already running), pinned to one CPU.
    import subprocess
    import sys

    code = (
        "import os, numpy as np\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from trainguard._native import WordSums, sums_worker_thread\n"
        "w = [np.arange(1 << 19, dtype=np.int32)]\n"
        "ws = WordSums(w, [w[0].view(np.uint8)])\n"
        "print(ws.threads, sums_worker_thread() is None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_the_worker_started_sums_alone():
    words = _words(5, np.int64, [1 << 18, 1000, 1 << 17])
    data = [w.view(np.uint8) for w in words]
    two = WordSums(words, data, threads=2)
    expected = _numpy_sums(words)
    assert two.sums() == expected  # the worker runs in this process
    pid = os.fork()
    if pid == 0:  # the child: no worker thread survived the fork
        status = 1
        try:
            ok = all(two.sums() == expected for _ in range(5)) and two.worker_bytes == 0
            ok = ok and _native.sums_worker_thread() is None and two.threads == 1
            status = 0 if ok else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert two.sums() == expected  # and the parent's worker is still there


def _replicas(tmp_path: Path, name: str, threads: list, steps: int = 5, after=None,
              overlap: bool = True) -> list[list[dict]]:
    """The step events of replicas of a 2.2 MiB model on the same data, one per entry of
    `threads` (the `threads` their `WordSums` are built with); `after(rank, step, model)` runs
    after each step."""
    assert tw._load_native()
    runs = []
    for rank, n in enumerate(threads):
        torch.manual_seed(8)
        model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 300))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        spool = tmp_path / f"{name}-{rank}.jsonl"
        real = tw._WordSums
        tw._WordSums = functools.partial(real, threads=n)
        try:
            w = tw.watch(model, opt, run=f"p-{name}-{rank}", collector=f"http://127.0.0.1:{closed_port()}",
                         token="t", spool=spool, flush_s=0.01, full_every=3, sample_seed=7,
                         overlap=overlap)
        finally:
            tw._WordSums = real
        assert w._host and w._tracked.summer.threads == n
        # The parameters' pass ends after the hook, worker or not, unless turned off.
        assert w._tracked.overlap == overlap
        gen = torch.Generator().manual_seed(1)
        for step in range(1, steps + 1):
            loss = model(torch.randn(4, 256, generator=gen)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.log(loss=loss)
            if after is not None:
                after(rank, step, model)
        w.close(timeout=0.3)
        events = [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]
        runs.append([e for e in events if e["type"] == "step"])
    return runs


def test_replicas_share_fingerprints_whether_their_pass_is_shared_or_not(tmp_path):
    assert tw._load_native()
    one, two = _replicas(tmp_path, "mixed", [1, 2])
    assert [e["step"] for e in one] == [e["step"] for e in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        assert a["param_fingerprint"] == b["param_fingerprint"]
        assert a["update_fingerprint"] == b["update_fingerprint"]
        assert b["update"]["cosine"] > 0.999
    assert len({e["param_fingerprint"] for e in two}) == 5


def test_a_write_between_steps_is_read_alike_by_replicas_with_and_without_the_worker(tmp_path):
    # A projection after every step (written through torch, which counts it): the worker's
    # reads may have raced with it, so the parameters are read again at the next pre-hook, as
    # the next step finds them; a replica whose pass runs in the hook does the same.
    def project(rank, step, model):
        with torch.no_grad():
            for p in model.parameters():
                p.clamp_(-0.02, 0.02)

    one, two = _replicas(tmp_path, "project", [1, 2], steps=6, after=project)
    assert [a["param_fingerprint"] for a in one] == [b["param_fingerprint"] for b in two]
    assert [a["update_fingerprint"] for a in one] == [b["update_fingerprint"] for b in two]
    # The windows after the step are copied in the hook: Δθ is the step's update, unprojected.
    assert all(e["update"]["cosine"] > 0.999 for e in one + two)


def test_a_weight_changed_between_steps_on_one_replica_shows_in_that_steps_fingerprint(tmp_path):
    # Written after step 3's post-hook: step 3's fingerprint is of the parameters step 4 starts
    # from (the write is counted by torch), on the worker or not.
    def tamper(rank, step, model):
        if rank == 1 and step == 3:
            with torch.no_grad():
                model[2].weight.view(-1)[-1] += 1e-3

    for threads in ([2, 2], [1, 2], [2, 1]):
        a, b = _replicas(tmp_path, f"tamper-{threads[0]}{threads[1]}", threads, steps=6, after=tamper)
        differing = [e["step"] for e, f in zip(a, b) if e["param_fingerprint"] != f["param_fingerprint"]]
        assert differing == [3, 4, 5, 6], (threads, differing)


def test_without_overlap_an_uncounted_write_between_steps_is_read_alike(tmp_path):
    # Weight clipping through `.data` bypasses the version counters, so it could race with a pass
    # that runs after the hook; with overlap=False the pass is made in the hook, before it.
    def clip(rank, step, model):
        for p in model.parameters():
            p.data.clamp_(-0.02, 0.02)

    one, two = _replicas(tmp_path, "clip", [2, 2], steps=4, after=clip, overlap=False)
    assert [a["param_fingerprint"] for a in one] == [b["param_fingerprint"] for b in two]
    assert len({e["param_fingerprint"] for e in one}) == 4
