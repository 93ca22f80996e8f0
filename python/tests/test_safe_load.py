"""`trainguard.safe_load`: tensors rebuilt from bytes, equal to what torch.load returns."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import trainguard
from support import FIXTURES, write_live_checkpoint


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor in row-major order: exact equality for every dtype."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, torch.Tensor), name
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert torch.equal(_bits(g), _bits(w)), name


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4, 6, generator=g)
    return {
        "f32": base,
        "f64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "f16": base.to(torch.float16),
        "bf16": base.to(torch.bfloat16),
        "f8_e4m3": base.to(torch.float8_e4m3fn),
        "f8_e5m2": base.to(torch.float8_e5m2),
        "i64": torch.arange(-5, 5, dtype=torch.int64),
        "i32": torch.randint(-(2**31), 2**31 - 1, (2, 3), generator=g, dtype=torch.int32),
        "i16": torch.tensor([-300, 0, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        # Views: a transpose (non-contiguous) and a slice (storage offset) of one storage.
        "transposed": base.t(),
        "sliced": base[1:3, 2:],
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_safe_load_equals_torch_load_weights_only(tmp_path: Path, legacy: bool):
    state = _state()
    if legacy:
        # The legacy format stores float8 as an untyped storage that torch's own loader cannot
        # read back (and neither does safe_load: see the test below).
        state = {k: v for k, v in state.items() if not k.startswith("f8")}
    path = tmp_path / "state.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    # Our own freshly written file: the real loader is safe here, and it is the reference.
    want = torch.load(path, weights_only=True)
    got = trainguard.safe_load(path)
    _assert_same(got, want)
    assert got["transposed"].shape == (6, 4)
    assert got["transposed"].is_contiguous()


def test_legacy_float8_is_refused_as_torch_refuses_it(tmp_path: Path):
    path = tmp_path / "f8.pt"
    torch.save({"a": torch.ones(3).to(torch.float8_e4m3fn)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(trainguard.CheckpointError, match="untyped storage"):
        trainguard.safe_load(path)


def test_nested_containers_are_flattened_with_dotted_names(tmp_path: Path):
    path = tmp_path / "nested.pt"
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"model": {"layer": {"weight": w}}, "stack": [w * 2, w * 3], "step": 10}, path)
    got = trainguard.safe_load(str(path))
    _assert_same(
        got, {"model.layer.weight": w, "stack.0": w * 2, "stack.1": w * 3}
    )


def test_safe_load_reads_safetensors(tmp_path: Path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _state().items() if k not in ("transposed", "sliced")}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    _assert_same(trainguard.safe_load(path), state)


def test_safe_load_moves_tensors_to_the_device(tmp_path: Path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2, 2)}, path)
    assert trainguard.safe_load(path)["w"].device.type == "cpu"
    assert trainguard.safe_load(path, device="meta")["w"].device.type == "meta"
    assert trainguard.safe_load(path, device=torch.device("meta"))["w"].is_meta


def test_safe_load_tensors_are_writable_and_independent(tmp_path: Path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(3)}, path)
    got = trainguard.safe_load(path)
    got["w"] += 1  # no "non-writable buffer" problem
    assert torch.equal(trainguard.safe_load(path)["w"], torch.zeros(3))


def test_safe_load_refuses_a_live_checkpoint_without_running_it(tmp_path: Path):
    marker = tmp_path / "MARKER"
    path = write_live_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(trainguard.UnsafeModelError) as info:
        trainguard.safe_load(path)
    assert info.value.report.verdict == "malicious"
    assert not marker.exists()


def test_safe_load_refuses_the_corpus_malicious_checkpoint():
    with pytest.raises(trainguard.UnsafeModelError) as info:
        trainguard.safe_load(FIXTURES / "torch_zip_malicious.pt")
    assert any("os.system" in (f.evidence or "") for f in info.value.report.findings)


def test_safe_load_of_something_that_is_not_a_checkpoint(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("just text\n")
    assert trainguard.scan(path).is_clean
    with pytest.raises(trainguard.CheckpointError):
        trainguard.safe_load(path)


def test_safe_load_without_torch_returns_numpy_arrays(tmp_path: Path):
    path = tmp_path / "state.pt"
    state = {
        "f32": torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),
        "i64": torch.arange(5),
        "u8": torch.tensor([1, 2, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True], [False]]),
        "f16": torch.tensor([0.5, -2.0], dtype=torch.float16),
        "transposed": torch.arange(6, dtype=torch.float64).reshape(2, 3).t(),
    }
    torch.save(state, path)
    np.savez(tmp_path / "want.npz", **{k: v.numpy() for k, v in state.items()})
    torch.save({"b": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "bf16.pt")
    # A fresh interpreter in which `import torch` fails.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        import numpy as np
        import trainguard
        got = trainguard.safe_load(sys.argv[1] + "/state.pt")
        want = np.load(sys.argv[1] + "/want.npz", allow_pickle=False)
        assert sorted(got) == sorted(want.files), (sorted(got), want.files)
        for k in want.files:
            assert isinstance(got[k], np.ndarray), k
            assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
            np.testing.assert_array_equal(got[k], want[k])
        try:
            trainguard.safe_load(sys.argv[1] + "/bf16.pt")
        except trainguard.CheckpointError as e:
            assert "BF16" in str(e), e
        else:
            raise AssertionError("bf16 without torch must raise")
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
