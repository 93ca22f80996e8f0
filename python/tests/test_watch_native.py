"""Tests of the native reads behind trainguard.watch on the CPU (`WordSums`, `Gather` in
`trainguard._native`) and of the watch behaviours that depend on their caches: a parameter or
buffer replaced, moved or non-contiguous, optimizer state replaced or reloaded."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from support import closed_port, small_model  # noqa: E402

from trainguard._native import Gather, WordSums  # noqa: E402

tw = importlib.import_module("trainguard.watch")

M64 = (1 << 64) - 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numpy_sums(words: list) -> bytes:
    """The definition: NumPy's wrap-around sum in the words' own width, as `int & 2**64-1`."""
    return b"".join((int(np.add.reduce(w, 0, w.dtype)) & M64).to_bytes(8, "little") for w in words)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8])
def test_word_sums_match_numpy_wrapping_sums(dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    words = [
        rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True)
        for n in (0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099)
    ]
    words.append(np.full(513, info.max, dtype=dtype))  # wraps around many times
    words.append(np.full(513, info.min, dtype=dtype))
    ws = WordSums(words, [w.view(np.uint8) for w in words])
    assert ws.sums() == _numpy_sums(words)
    assert len(ws) == len(words) and ws.nbytes == sum(w.nbytes for w in words)


def test_word_sums_of_tensor_words_match_the_torch_device_path():
    # The CUDA path sums the same words with torch (int64 results, sign-extended): same bytes.
    tensors = [torch.randn(1001), torch.randn(64, 3).half(), torch.randn(5).double(), torch.randn(3).half()]
    words = [tw._sum_words(t) for t in tensors]
    ws = WordSums([w.numpy() for w in words], [w.view(torch.uint8).numpy() for w in words])
    device = torch.stack([
        (w.sum() if w.dtype == torch.int64 else w.sum(dtype=w.dtype)).to(torch.int64) for w in words
    ])
    assert ws.sums() == device.numpy().tobytes()


def test_plans_copy_byte_ranges_with_the_sums():
    a = np.arange(100, dtype=np.int64)
    b = np.arange(37, dtype=np.int16)
    data = [a.view(np.uint8), b.view(np.uint8)]
    plans = [[(0, 8, 24), (1, 3, 9)], [(1, 0, b.nbytes)], []]
    ws = WordSums([a, b], data, plans)
    sums = _numpy_sums([a, b])
    first = data[0][8:24].tobytes() + data[1][3:9].tobytes()
    assert ws.sums() == sums
    assert ws.sums(0) == sums + first
    assert ws.sums(1, 0) == sums + b.tobytes() + first
    assert ws.sums(2) == sums
    assert ws.copy(0) == first and ws.copy(2) == b""
    a[1] = 7  # the views read the arrays as they are now
    assert ws.copy(0) == data[0][8:24].tobytes() + data[1][3:9].tobytes()
    assert ws.sums()[:8] != sums[:8]


def test_word_sums_refuse_what_they_cannot_read():
    a = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError, match="words 0 are not C-contiguous"):
        WordSums([a[::2]], [a.view(np.uint8)])
    with pytest.raises(ValueError, match="int64, int32, int16 or uint8"):
        WordSums([a.view(np.float64)], [a.view(np.uint8)])
    with pytest.raises(ValueError, match="int64, int32, int16 or uint8"):
        WordSums([a.view(np.uint64)], [a.view(np.uint8)])
    with pytest.raises(ValueError, match="data 0 is not the bytes of words 0"):
        WordSums([a], [a.copy().view(np.uint8)])
    with pytest.raises(ValueError, match="different lengths"):
        WordSums([a], [])
    with pytest.raises(ValueError, match="outside the tensors"):
        WordSums([a], [a.view(np.uint8)], [[(0, 0, a.nbytes + 1)]])
    with pytest.raises(ValueError, match="outside the tensors"):
        WordSums([a], [a.view(np.uint8)], [[(1, 0, 1)]])
    ws = WordSums([a], [a.view(np.uint8)], [[(0, 0, 8)]])
    with pytest.raises(ValueError, match="no plan 1"):
        ws.sums(1)
    with pytest.raises(ValueError, match="no plan 3"):
        ws.copy(3)


def test_gather_copies_and_its_guards():
    m, v = torch.randn(50), torch.randn(50)
    state = {"exp_avg": m, "exp_avg_sq": v}
    views = [m.numpy()[3:9].view(np.uint8), v.numpy()[0:4].view(np.uint8)]
    g = Gather(views, [(state, "exp_avg", m), (state, "exp_avg_sq", v)])
    assert len(g) == 2 and g.nbytes == 40
    assert g.copy() == m.numpy()[3:9].tobytes() + v.numpy()[0:4].tobytes()
    m.add_(1.0)  # in place: the views see it
    assert g.copy() == m.numpy()[3:9].tobytes() + v.numpy()[0:4].tobytes()
    state["exp_avg"] = m.clone()  # replaced: the views are stale
    assert g.copy() is None
    state["exp_avg"] = m
    assert g.copy() is not None
    del state["exp_avg_sq"]
    assert g.copy() is None
    assert Gather([]).copy() == b""
    with pytest.raises(ValueError, match="array 0 is not C-contiguous"):
        Gather([np.arange(10, dtype=np.uint8)[::2]])
    with pytest.raises(BufferError):
        Gather([np.arange(10, dtype=np.int32)])  # bytes only


# ---------------------------------------------------------------------------------------------
# The watch's caches
# ---------------------------------------------------------------------------------------------


def _run(model, opt, steps: int, tmp_path: Path, name: str, *, after_step=None, **kw) -> list[dict]:
    spool = tmp_path / f"{name}.jsonl"
    w = tw.watch(model, opt, run=f"n-{name}", collector=f"http://127.0.0.1:{closed_port()}", token="t",
                 spool=spool, flush_s=0.01, **kw)
    assert w._host  # these tests are about the native host path
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        loss = model(torch.randn(8, 16, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.log(loss=loss)
        if after_step is not None:
            after_step(step, model, opt)
    w.close(timeout=0.3)
    events = [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]
    return [e for e in events if e["type"] == "step"]


def _pair(tmp_path, name, steps, tamper, **kw):
    """Two replicas on the same data; `tamper(step, model, opt)` runs on the second after each
    of its steps. Returns the steps at which their parameter fingerprints differ."""
    runs = []
    for rank in (0, 1):
        model = small_model(seed=3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        runs.append(_run(model, opt, steps, tmp_path, f"{name}-{rank}", after_step=tamper if rank else None, **kw))
    a, b = runs
    assert [e["step"] for e in a] == [e["step"] for e in b] == list(range(1, steps + 1))
    return [e["step"] for e, f in zip(a, b) if e["param_fingerprint"] != f["param_fingerprint"]], b


def test_the_bulk_data_pointer_check_is_torch_s_and_trusted():
    check = tw._bulk_ptr_check()
    if check is None:  # a torch without it: the per-tensor check is used
        assert not hasattr(torch._C, "_tensors_data_ptrs_at_indices_equal")
        return
    a, b = torch.zeros(3), torch.zeros(0)
    ptrs = [a.data_ptr(), b.data_ptr()]
    assert check([a, b], ptrs, [0, 1]) is True
    a.data = torch.ones(3)
    assert check([a, b], ptrs, [0, 1]) is False


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-check", "per-tensor-check"])
@pytest.mark.parametrize("how", ["changed", "changed-at-an-offset", "same-values"])
def test_a_parameter_replaced_through_data_is_read_from_its_new_memory(how, bulk, tmp_path, monkeypatch):
    if not bulk:
        monkeypatch.setattr(tw, "_bulk_ptr_check", lambda: None)
    def tamper(step, model, opt):
        if step != 3:
            return
        p = model[2].weight
        with torch.no_grad():
            new = p.detach().clone()
            if how != "same-values":
                new.view(-1)[5] += 1e-3
            if how == "changed-at-an-offset":  # 4 bytes into another storage: other words
                new = torch.cat([torch.zeros(1), new.view(-1)])[1:].view_as(p)
        p.data = new

    differing, steps = _pair(tmp_path, f"data-{how}-{bulk}", 6, tamper, full_every=0)
    assert differing == ([] if how == "same-values" else [4, 5, 6])
    # The step during which a parameter moved has no update check (its windows before the step
    # are the old memory's); the others follow the new memory (no false alarm).
    assert [s["step"] for s in steps if "update" not in s] == [4]
    assert all(s["update"]["cosine"] > 0.999 for s in steps if "update" in s)


def test_a_buffer_replaced_by_assignment_is_fingerprinted_from_then_on(tmp_path):
    def make():
        torch.manual_seed(4)
        return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))

    runs = []
    for rank in (0, 1):
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)

        def tamper(step, model, opt, rank=rank):
            if rank and step == 2:
                model[1].running_var = model[1].running_var.clone().fill_(2.0)

        runs.append(_run(model, opt, 4, tmp_path, f"bufassign-{rank}", after_step=tamper, full_every=0))
    a, b = runs
    assert [e["step"] for e, f in zip(a, b) if e["param_fingerprint"] != f["param_fingerprint"]] == [3, 4]


def test_empty_tensors_and_a_buffer_set_to_none_are_handled(tmp_path):
    class WithEmpty(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(7)
            self.lin = torch.nn.Linear(16, 4)
            self.nothing = torch.nn.Parameter(torch.empty(0))  # null data pointer
            self.register_buffer("scale", torch.ones(4))

        def forward(self, x):
            return self.lin(x) * (self.scale if self.scale is not None else 1.0)

    def drop_buffer(step, model, opt):
        if step == 2:
            model.scale = None

    model = WithEmpty()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = _run(model, opt, 4, tmp_path, "empty", after_step=drop_buffer)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert len({s["param_fingerprint"] for s in steps}) == 4
    assert all(s["update"]["cosine"] > 0.999 for s in steps)


def test_non_contiguous_parameters_are_fingerprinted_and_checked(tmp_path):
    class Transposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.w = torch.nn.Parameter(torch.randn(4, 16).t())  # (16, 4), not contiguous
            self.b = torch.nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x @ self.w + self.b

    def tamper(step, model, opt):
        if step == 2:
            with torch.no_grad():
                model.w[3, 1] += 1e-3

    runs = []
    for rank in (0, 1):
        model = Transposed()
        assert not model.w.is_contiguous()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        runs.append(_run(model, opt, 5, tmp_path, f"noncontig-{rank}", after_step=tamper if rank else None,
                         full_every=2))
    a, b = runs
    assert [e["step"] for e, f in zip(a, b) if e["param_fingerprint"] != f["param_fingerprint"]] == [3, 4, 5]
    for s in a:
        assert s["update"]["cosine"] > 0.999, s


@pytest.mark.parametrize("how", ["state-tensor-replaced", "load_state_dict"])
def test_replaced_optimizer_state_is_reread(how, tmp_path):
    def reset(step, model, opt):
        if step != 3:
            return
        if how == "load_state_dict":
            opt.load_state_dict(opt.state_dict())  # new state table and tensors
        else:
            for st in opt.state.values():
                st["exp_avg"] = st["exp_avg"].clone()

    model = small_model(seed=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = _run(model, opt, 6, tmp_path, f"state-{how}", after_step=reset, sample=64)
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        assert s["update"]["cosine"] > 0.999, s
        assert s["update"]["update_norm"] == pytest.approx(s["update"]["expected_norm"], rel=1e-3)


def test_positional_slices_cover_every_parameter_and_buffer_element_once_per_cycle():
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3).half())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert tw._load_native()
    tr = tw._Tracked(opt, model, host=True)
    tr.plan(4, [])
    tensors = tr.tensors()
    covered = [np.zeros(t.numel(), dtype=int) for t in tensors]
    for part in range(4):
        for i, lo, offset, size in tr.segments[part]:
            covered[i][lo:lo + size // tensors[i].element_size()] += 1
    assert all((c == 1).all() for c in covered)
    assert sum(tr.roll_bytes) == sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("loss", ["tensor", "float", "vector"])
def test_the_logged_loss_is_recorded(loss, tmp_path):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    spool = tmp_path / f"loss-{loss}.jsonl"
    w = tw.watch(model, opt, run=f"loss-{loss}", collector=f"http://127.0.0.1:{closed_port()}", token="t",
                 spool=spool, flush_s=0.01)
    x = torch.randn(4, 16)
    out = model(x).pow(2)
    value = out.mean()
    opt.zero_grad()
    value.backward()
    opt.step()
    w.log(loss={"tensor": value, "float": float(value), "vector": out.detach().mean(0)}[loss])
    w.close(timeout=0.3)
    step = [json.loads(line) for line in spool.read_text().splitlines() if '"step"' in line][0]
    expected = "nan" if loss == "vector" else pytest.approx(float(value))
    assert step["loss"] == expected
