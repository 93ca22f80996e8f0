"""Type stubs for trainguard.watch (see watch.py for the behaviour)."""

import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

__all__ = ["watch", "Watch", "WatchError"]

class WatchError(RuntimeError): ...

class Watch:
    model: Any
    optimizer: torch.optim.Optimizer
    run: str
    collector: str
    rank: int
    world_size: int
    every: int
    spool: Path
    full_every: int
    section: str
    replica_group: Optional[str]
    heartbeat_s: float
    def __enter__(self) -> Watch: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...
    def log(self, loss: Any = None) -> None: ...
    def flush(self, timeout: float = 10.0) -> bool: ...
    def close(self, clean: bool = True, timeout: float = 10.0) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def token(self) -> Optional[str]: ...

def watch(
    model: Any,
    optimizer: torch.optim.Optimizer,
    run: Optional[str] = None,
    collector: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    token: Optional[str] = None,
    every: int = 1,
    spool: Optional[os.PathLike[str] | str] = None,
    *,
    seed: Optional[int] = None,
    heartbeat_s: float = 5.0,
    sample: int = 4096,
    full_every: int = 50,
    section: str = "optimizer",
    replica_group: Optional[str] = None,
    rng: Iterable[str] = ("python", "numpy", "torch_cpu", "torch_cuda"),
    flush_s: float = 0.5,
    sample_seed: Optional[int] = None,
    sync: bool = True,
    overlap: bool = True,
) -> Watch: ...
def register_run(collector: str, run: Optional[str], timeout: float = 5.0) -> tuple[str, str]: ...
def rng_hashes(names: Iterable[str] = ...) -> dict[str, str]: ...
def fingerprint(x: torch.Tensor, positions: Optional[torch.Tensor] = None) -> str: ...
def fingerprint_lanes(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...
