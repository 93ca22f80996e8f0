"""Fault injectors that reproduce the 2024 insider incident, one at a time (see README.md).

Each one behaves the way the reporting describes the attacker's changes: they live in the
training process (an edited PyTorch, a patched optimizer class), so they run *inside* the hooks
trainguard.watch installs and must be caught by invariants checked outside the process.

Kinds:
  sleep   random short sleeps in the optimizer step, only when the job has more than
          SLEEP_MIN_WORLD ranks (the incident's "only above 256 GPUs"), on SLEEP_RANK
  flip    the applied update is negated on FLIP_RANK (the optimizer state stays honest)
  seed    SEED_RANK seeds its generators with a different seed
  tamper  one weight element is changed on TAMPER_RANK after step TAMPER_STEP
  kill    KILL_RANK sends itself SIGKILL at step KILL_STEP
"""

from __future__ import annotations

import os
import random
import signal
import time

import torch

KINDS = ("clean", "sleep", "flip", "seed", "tamper", "kill")

SLEEP_MIN_WORLD = 2  # the sleeps switch on above this world size (">256 GPUs" scaled down)
SLEEP_RANK = 1
SLEEP_PROB = 0.15
SLEEP_S = (0.02, 0.06)
FLIP_RANK = 1
SEED_RANK = 2
TAMPER_RANK = 2
TAMPER_STEP = 30
KILL_RANK = 3
KILL_STEP = 40


def install(kind: str, rank: int, world_size: int, optimizer_class: type) -> None:
    """Patch `optimizer_class.step` before the optimizer is built, as an edited torch would be."""
    if kind not in KINDS:
        raise ValueError(f"unknown sabotage {kind!r}; one of {KINDS}")
    original = optimizer_class.step
    if kind == "sleep" and world_size > SLEEP_MIN_WORLD and rank == SLEEP_RANK:
        # A private generator: the global RNG streams stay untouched, so only timing shows it.
        rng = random.Random(os.getpid())

        def step(self, closure=None):
            if rng.random() < SLEEP_PROB:
                time.sleep(rng.uniform(*SLEEP_S))
            return original(self, closure)

        optimizer_class.step = step
    elif kind == "flip" and rank == FLIP_RANK:

        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            before = [p.detach().clone() for p in params]
            out = original(self, closure)
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(2 * b - p)  # θ_before − Δθ: the update, reversed
            return out

        optimizer_class.step = step


def seed_for(kind: str, rank: int, seed: int) -> int:
    """The seed a rank actually uses."""
    return seed + 1 if kind == "seed" and rank == SEED_RANK else seed


def after_step(kind: str, rank: int, step: int, model: torch.nn.Module) -> None:
    """Called by the training loop after each optimizer step."""
    if kind == "tamper" and rank == TAMPER_RANK and step == TAMPER_STEP:
        with torch.no_grad():
            w = next(model.parameters())
            w.view(-1)[-1] += 1e-3  # one element, the last of the first layer
    if kind == "kill" and rank == KILL_RANK and step == KILL_STEP:
        os.kill(os.getpid(), signal.SIGKILL)
