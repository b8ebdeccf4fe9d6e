"""The worker of test_rho_moco_shuffle_bn's 2-process check, in a module of its own so that the
spawned processes import torch and vssl.losses.moco only (not the test module's vssl.tasks)."""

import os

import torch
from torch import distributed as dist
from torch import nn

from vssl.losses.moco import encode_shuffled


def ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` of 2 (gloo): encodes 4 random rows of its own through a training-mode batch
    norm with shuffling BN, and saves its rows, the slice it encoded and the outputs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # a different local batch on each process
        x = torch.randn(4, 3)
        seen = []
        bn = nn.BatchNorm1d(3, affine=False).train()

        def encode(v: torch.Tensor) -> torch.Tensor:
            seen.append(v.clone())
            return bn(v)

        torch.manual_seed(7)  # the same draw on both processes; rank 0's is broadcast
        keys = encode_shuffled(encode, x, num_splits=4)
        plain = encode_shuffled(lambda v: (2 * v, v.sum(1)), x)  # no batch norm, a tuple
        out = {"x": x, "keys": keys, "slice": seen[0], "plain": plain}
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()
