"""A small data-parallel training job (gloo, CPU) watched by trainguard.watch.

Run by run_replay.py, one process per rank, with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
TRAINGUARD_RUN / TRAINGUARD_TOKEN / TRAINGUARD_COLLECTOR in the environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))


def load_watch():
    """`trainguard.watch`, or the module file itself when the package's native part is not built."""
    try:
        from trainguard.watch import watch  # noqa: PLC0415

        return watch
    except ImportError:
        path = HERE.parents[1] / "python" / "trainguard" / "watch.py"
        spec = importlib.util.spec_from_file_location("trainguard_watch", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.watch


watch = load_watch()  # imported before any seeding, so the seeding calls are recorded

import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import sabotage  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sabotage", default="clean", choices=sabotage.KINDS)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    seed = sabotage.seed_for(args.sabotage, rank, args.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    sabotage.install(args.sabotage, rank, world, torch.optim.AdamW)

    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1),
    )
    ddp = DDP(model)  # broadcasts rank 0's weights
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.01)

    # Synthetic regression data, a different shard per rank, from a generator of its own so the
    # global RNG streams stay in lockstep across replicas. The inputs are bounded (uniform, unit
    # variance): with Gaussian ones the per-batch loss of this small dropout MLP has a tail that
    # reached the loss-spike detector's robust z of 10 once in 8,000 clean rank-steps.
    data = torch.Generator().manual_seed(10_000 + rank)
    w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))

    with watch(ddp, opt, every=1) as w:
        for step in range(1, args.steps + 1):
            x = (torch.rand(64, 32, generator=data) * 2 - 1) * 3**0.5
            y = x @ w_true + 0.1 * torch.randn(64, 1, generator=data)
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            w.log(loss=loss)
            sabotage.after_step(args.sabotage, rank, step, model)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
