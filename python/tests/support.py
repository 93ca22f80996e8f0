"""Helpers shared by the tests: the tg-scan fixture corpus, live and clean checkpoints, and the
watch tests' small model, closed port and one-thread torch."""

from __future__ import annotations

import builtins
import csv
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates" / "tg-scan" / "tests" / "fixtures"


def expected_rows() -> list[dict[str, str]]:
    """The rows of tg-scan's `expected.csv`: file, expected_verdict, technique, evidence."""
    with open(FIXTURES / "expected.csv", newline="") as f:
        return list(csv.DictReader(f))


class WriteMarker:
    """Pickles as `builtins.exec("open(MARKER, 'w').close()")`: loading it creates MARKER.

    Saving it runs nothing; only an unpickler that calls `exec` creates the file.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def write_live_checkpoint(path: Path, marker: Path, **save_kwargs) -> Path:
    """A real `torch.save` checkpoint whose pickle creates `marker` when unpickled."""
    import torch

    torch.save({"weight": torch.ones(2, 2), "config": WriteMarker(marker)}, path, **save_kwargs)
    return path


def run_unguarded_load(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`torch.load(path, weights_only=False)` in a throwaway interpreter, without trainguard."""
    code = textwrap.dedent(
        """
        import sys, torch
        try:
            torch.load(sys.argv[1], weights_only=False)
        except Exception as e:  # the payload has run by the time anything fails
            print(type(e).__name__, e)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def torch_load_restored():
    """Asserts that a test leaves `torch.load` exactly as it found it."""
    import torch
    import torch.serialization

    before = (torch.load, torch.serialization.load)
    yield
    after = (torch.load, torch.serialization.load)
    torch.load, torch.serialization.load = before
    assert after == before, "the test left torch.load guarded"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored after: the watch tests' models are tiny,
    and on a shared 2-core runner torch's intra-op threads only add synchronisation
    (milliseconds per operator under load). Use it as an autouse fixture of the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def closed_port() -> int:
    """A loopback port nothing listens on (a collector that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(seed: int = 0):
    """A 16 -> 32 -> 4 MLP with weights from `seed`."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
