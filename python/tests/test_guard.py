"""`trainguard.guard_torch_load`: every torch.load is scanned first and refused unless clean."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
import torch.serialization

import _fake_library
import trainguard
from support import FIXTURES, run_unguarded_load, write_live_checkpoint

pytestmark = pytest.mark.usefixtures("torch_load_restored")


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path]:
    """A live malicious checkpoint and the marker file its payload would create."""
    marker = tmp_path / "MARKER"
    return write_live_checkpoint(tmp_path / "evil.pt", marker), marker


def test_the_live_fixture_really_runs_its_payload_without_the_guard(live, tmp_path):
    path, marker = live
    proc = run_unguarded_load(path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists(), "the payload did not run: the fixture proves nothing"


@pytest.mark.parametrize("as_type", [str, Path])
def test_guard_refuses_a_live_checkpoint_and_its_payload_does_not_run(live, as_type):
    path, marker = live
    with trainguard.guard_torch_load():
        with pytest.raises(trainguard.UnsafeModelError) as info:
            torch.load(as_type(path), weights_only=False)
    assert not marker.exists()
    report = info.value.report
    assert report.verdict == "malicious"
    assert any("exec" in (f.evidence or "") for f in report.findings), report.findings
    assert str(path) in str(info.value)


def test_guard_covers_library_code_that_calls_torch_load(live):
    path, marker = live
    with trainguard.guard_torch_load():
        with pytest.raises(trainguard.UnsafeModelError):
            _fake_library.from_pretrained(str(path))
        with pytest.raises(trainguard.UnsafeModelError):
            _fake_library.load_via_serialization(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("opener", ["file", "bytesio"])
def test_guard_scans_file_like_objects(live, opener):
    path, marker = live
    with trainguard.guard_torch_load():
        if opener == "file":
            with open(path, "rb") as fh, pytest.raises(trainguard.UnsafeModelError) as info:
                torch.load(fh, weights_only=False)
            assert info.value.report.path == str(path)
        else:
            buf = io.BytesIO(path.read_bytes())
            with pytest.raises(trainguard.UnsafeModelError):
                torch.load(buf, weights_only=False)
    assert not marker.exists()


def test_guard_refuses_the_corpus_malicious_checkpoint():
    with trainguard.guard_torch_load():
        with pytest.raises(trainguard.UnsafeModelError) as info:
            torch.load(FIXTURES / "torch_zip_malicious.pt", weights_only=False)
    assert "os.system" in str(info.value)


def _clean_state(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.tensor([1, -2, 3], dtype=torch.int64),
        "h": torch.linspace(0, 1, 5).to(torch.bfloat16),
    }
    path = tmp_path / "clean.pt"
    torch.save(state, path)
    return path, state


def test_a_clean_checkpoint_loads_through_the_guard(tmp_path):
    path, state = _clean_state(tmp_path)
    with trainguard.guard_torch_load():
        by_path = torch.load(path, weights_only=False)
        by_library = _fake_library.from_pretrained(path)
        by_mmap = torch.load(path, mmap=True, weights_only=True)
        with open(path, "rb") as fh:
            by_file = torch.load(fh, weights_only=True)
    for loaded in (by_path, by_library, by_mmap, by_file):
        assert loaded.keys() == state.keys()
        for k, v in state.items():
            assert loaded[k].dtype == v.dtype
            assert torch.equal(loaded[k], v)


def test_a_file_swapped_in_after_the_scan_is_not_what_gets_loaded(tmp_path, monkeypatch):
    """Regression: scan-then-load by name let a rename over the path slip a payload through."""
    path, state = _clean_state(tmp_path)
    marker = tmp_path / "MARKER"
    evil = write_live_checkpoint(tmp_path / "evil.pt", marker)
    real_check = trainguard._native.check_path

    def check_then_swap(*args, **kwargs):
        report = real_check(*args, **kwargs)
        os.replace(evil, path)  # the attacker wins the race: the path now holds the payload
        return report

    monkeypatch.setattr(trainguard._native, "check_path", check_then_swap)
    with trainguard.guard_torch_load():
        loaded = torch.load(path, weights_only=False)
    assert not evil.exists(), "the swap did not happen: the test proves nothing"
    assert not marker.exists()
    assert torch.equal(loaded["w"], state["w"])
    assert not trainguard.scan(path).is_clean


def test_a_missing_file_keeps_the_loaders_error(tmp_path):
    with trainguard.guard_torch_load(), pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "absent.pt")


def test_an_object_that_cannot_be_scanned_is_refused():
    with trainguard.guard_torch_load(), pytest.raises(trainguard.TrainguardError):
        torch.load(12345)


def test_the_policy_applies_to_guarded_loads(tmp_path):
    import numpy as np

    path = tmp_path / "with_numpy.pt"
    torch.save({"a": np.arange(3)}, path)
    assert trainguard.scan(path).is_clean
    assert not trainguard.scan(path, policy="weights-only").is_clean
    with trainguard.guard_torch_load(policy="weights-only"):
        with pytest.raises(trainguard.UnsafeModelError):
            torch.load(path, weights_only=False)
    with trainguard.guard_torch_load():
        assert list(torch.load(path, weights_only=False)["a"]) == [0, 1, 2]


def test_context_manager_restores_torch_load():
    original = torch.load
    assert torch.serialization.load is original
    with trainguard.guard_torch_load() as guard:
        assert guard.installed_here
        assert torch.load is not original
        assert torch.serialization.load is torch.load
        assert torch.load.__wrapped__ is original
    assert torch.load is original
    assert torch.serialization.load is original


def test_context_manager_restores_torch_load_after_an_error(live):
    original = torch.load
    path, _ = live
    with pytest.raises(trainguard.UnsafeModelError):
        with trainguard.guard_torch_load():
            torch.load(path)
    assert torch.load is original


def test_guard_is_idempotent():
    original = torch.load
    first = trainguard.guard_torch_load()
    try:
        wrapped = torch.load
        second = trainguard.guard_torch_load()
        assert not second.installed_here
        assert torch.load is wrapped
        assert torch.load.__wrapped__ is original
        with trainguard.guard_torch_load():
            assert torch.load is wrapped
        second.restore()
        assert torch.load is wrapped, "a call that did not install the guard must not remove it"
        with pytest.raises(trainguard.PolicyError):
            trainguard.guard_torch_load(policy="weights-only")
    finally:
        first.restore()
    assert torch.load is original
    first.restore()
    assert torch.load is original


def test_a_bad_policy_is_refused_before_anything_is_patched():
    original = torch.load
    with pytest.raises(trainguard.PolicyError):
        trainguard.guard_torch_load(policy="nope")
    assert torch.load is original
