"""MoCo-style contrastive pieces: a FIFO queue of keys, InfoNCE against it, the relative speed
margin ranking loss of RSPNet, and shuffling BN for key encoders (below).

Conventions: embeddings are L2-normalised rows ``(B, D)``; the queue stores one key per row,
``(K, D)``, oldest overwritten first. Logits are similarities divided by a temperature ``tau``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn import functional as F


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` keys of dimension ``dim`` (the negatives of InfoNCE).

    Starts filled with random unit vectors, as in MoCo. ``enqueue`` writes a batch of keys at
    the pointer, wrapping around the end, and moves the pointer on. Both the keys and the
    pointer are buffers, so they are saved in checkpoints and moved to the device with the model.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and key dimension must be >= 1, got {size} and {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of keys the queue holds."""
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrites the oldest ``len(keys)`` entries with ``keys`` ``(N, D)``, in order."""
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"expected keys of shape (N, {self.keys.shape[1]}), got {tuple(keys.shape)}"
            )
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(
                f"{n} keys in one step do not fit a queue of {self.size}: raise queue_size to at "
                "least the global batch size"
            )
        rows = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[rows] = keys.detach().to(self.keys.dtype)
        self.ptr.copy_((self.ptr + n) % self.size)


def info_nce_logits(query: Tensor, key: Tensor, queue: Tensor, tau: float) -> Tensor:
    """Logits ``(B, 1 + K)``: the positive ``query . key`` first, then ``query . queue`` rows."""
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ queue.T
    return torch.cat([positive, negative], dim=1) / tau


def info_nce(query: Tensor, key: Tensor, queue: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """InfoNCE of each query against its key (positive) and the queue (negatives).

    Returns the mean cross-entropy with the positive at index 0, and the logits (for accuracy).
    ``queue`` must not be modified in place before the backward pass: pass a copy if it will be.
    """
    logits = info_nce_logits(query, key, queue, tau)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


def relative_speed_loss(
    query: Tensor, same: Tensor, other: Tensor, tau: float, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    """RSPNet's relative speed perception loss: ``mean(max(0, margin - (s+ - s-)))``.

    ``s+ = query . same / tau`` (the key at the query's speed) and ``s- = query . other / tau``
    (the same key window at the other speed). Returns the loss, ``s+`` and ``s-`` ``(B,)``.
    """
    s_pos = (query * same).sum(dim=1) / tau
    s_neg = (query * other).sum(dim=1) / tau
    loss = F.margin_ranking_loss(s_pos, s_neg, torch.ones_like(s_pos), margin=margin)
    return loss, s_pos, s_neg


# ---------------------------------------------------------------- shuffling BN
# Shuffling BN for momentum (key) encoders: a key is normalised with other samples' statistics.
#
# He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020 (code
# facebookresearch/moco, ``moco/builder.py``): with batch norm, a query and its positive key
# encoded in batches of the same samples can share information through the batch statistics, and
# the model can find the positive by that instead of by its content. MoCo shuffles the keys across
# GPUs before the key encoder (``_batch_shuffle_ddp``: all-gather, one random permutation
# broadcast from rank 0, each rank encodes its slice) and restores their order after
# (``_batch_unshuffle_ddp``). On one GPU the authors' CIFAR-10 demo (``colab/moco_cifar10_demo``)
# emulates it: batch norm over ``num_splits`` sub-batches (``SplitBatchNorm``) in both encoders,
# the queries in order and the keys shuffled, so that the key of a sample is normalised with
# other samples than those its query is normalised with.
#
# - `split_encode`: ``encode`` applied to ``num_splits`` consecutive sub-batches, concatenated.
#   In training, batch norm then sees one sub-batch at a time, as ``SplitBatchNorm``; it works for
#   any network without swapping its layers. Running statistics are updated once per sub-batch
#   (``SplitBatchNorm`` averages the sub-batches' updates: the same in expectation).
# - `encode_shuffled`: the keys' encoding with shuffling BN, in input order: across processes
#   under ``torch.distributed`` (MoCo's code), else shuffled within the batch and split.
# - `shuffle` / `unshuffle`, `gather`: the pieces.
#
# ``encode`` returns a tensor or a tuple of tensors with one row per input sample (RSPNet's and
# TDL's key encoders return two projections).

Encoded = Tensor | tuple[Tensor, ...]


def splits_for(batch: int, num_splits: int) -> int:
    """The sub-batches a batch of ``batch`` samples is split into: ``num_splits``, or as many of
    at least 2 samples as fit (batch norm needs 2), at least 1."""
    if not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an integer >= 1, got {num_splits!r}")
    return max(1, min(num_splits, batch // 2))


def _map(out: Encoded, fn: Callable[[Tensor], Tensor]) -> Encoded:
    return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)


def split_encode(encode: Callable[[Tensor], Encoded], x: Tensor, num_splits: int) -> Encoded:
    """``encode`` on ``splits_for(len(x), num_splits)`` consecutive sub-batches of ``x`` (sizes
    differing by at most one), the outputs concatenated in input order."""
    n = splits_for(x.shape[0], num_splits)
    if n == 1:
        return encode(x)
    outs = [encode(part) for part in torch.tensor_split(x, n)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))
    return torch.cat(outs)


def shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``x`` in a random order and the permutation: ``shuffled[j] = x[perm[j]]``."""
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x[perm], perm


def unshuffle(out: Encoded, perm: Tensor) -> Encoded:
    """Undoes `shuffle` on outputs (row ``j`` is the output of sample ``perm[j]``)."""
    restore = torch.argsort(perm)
    return _map(out, lambda o: o[restore])


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """The rows of every process, in rank order (``torch.distributed.all_gather``; MoCo's
    ``concat_all_gather``). Every process must pass the same shape."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def encode_shuffled(
    encode: Callable[[Tensor], Encoded],
    x: Tensor,
    num_splits: int = 1,
    generator: torch.Generator | None = None,
) -> Encoded:
    """``encode(x)`` with shuffling BN, the outputs in input order.

    Under ``torch.distributed`` with more than one process (MoCo's ``_batch_shuffle_ddp``): the
    batches of all processes are gathered, permuted by one permutation drawn on rank 0 and
    broadcast, each process encodes its slice, and the outputs are gathered and put back in
    order; every process must call it with the same batch size. On one process: ``x`` shuffled,
    encoded in ``num_splits`` sub-batches (`split_encode`), unshuffled; with ``num_splits=1``
    that is ``encode(x)`` (a permutation leaves the statistics of one batch unchanged).
    """
    if not _distributed():
        if splits_for(x.shape[0], num_splits) == 1:
            return encode(x)
        shuffled, perm = shuffle(x, generator)
        return unshuffle(split_encode(encode, shuffled, num_splits), perm)
    world, rank = dist.get_world_size(), dist.get_rank()
    everything = gather(x)
    perm = torch.randperm(everything.shape[0], generator=generator).to(x.device)
    dist.broadcast(perm, src=0)
    out = encode(everything[perm.view(world, -1)[rank]])
    # Row j of the gathered outputs is the output of global sample perm[j].
    rows = torch.argsort(perm).view(world, -1)[rank]
    return _map(out, lambda o: gather(o)[rows])
