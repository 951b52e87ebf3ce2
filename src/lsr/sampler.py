"""Batch samplers: same-``z`` groups for the inter losses, shuffled batches for intra.

Both samplers are *pure functions of (seed, step)*: batch ``s`` is computed from a random
generator seeded with ``(seed, s)``, never from a generator that has been advanced. That
makes them trivially resumable (the state is the step), identical with any number of
DataLoader workers, and identical on every rank of a distributed run, where each rank
computes the global batch and keeps its own share of *whole groups* (a group never spans
ranks).

A batch is a list of keys ``(index, group, draw)``: ``index`` is the dataset item, ``group``
the group id of that block within the global batch (the inter losses average within
groups), ``draw`` a number unique to this draw in the run (the dataset seeds the
augmentation with it, so a block drawn twice is augmented differently, reproducibly).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lsr.errors import LsrInputError

BatchKey = tuple[int, int, int]
POLICIES: tuple[str, ...] = ("uniform", "proportional")


class SamplerWarning(UserWarning):
    """A bin is too small for the requested group size (sampling with replacement)."""


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) for w in words])))


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")


class _StepSampler:
    """Shared plumbing: position, iteration, state."""

    kind = ""

    def __init__(self, seed: int, rank: int, world_size: int, steps: int | None):
        _check_rank(rank, world_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.steps = steps
        self.position = 0

    def batch(self, step: int) -> list[BatchKey]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[BatchKey]]:
        """Batches from :attr:`position` on (to ``steps`` if set, else forever)."""
        while self.steps is None or self.position < self.steps:
            step = self.position
            self.position += 1
            yield self.batch(step)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless sampler has no length")
        return max(self.steps - self.position, 0)

    def state_dict(self) -> dict[str, Any]:
        """Position and identity; a checkpoint stores the trainer's *consumed* step here."""
        return {"kind": self.kind, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state['position']``; a different kind or seed raises."""
        if state.get("kind") != self.kind or int(state.get("seed", -1)) != self.seed:
            raise LsrInputError(
                f"sampler state is for {state.get('kind')!r} seed {state.get('seed')!r}, "
                f"not {self.kind!r} seed {self.seed}"
            )
        self.position = int(state["position"])


class GroupBatchSampler(_StepSampler):
    """Each batch: ``groups_per_batch`` groups × ``group_size`` blocks, one ``z`` per group.

    ``labels`` (N,) is the bin ``z`` of every dataset item. For each group, a bin is chosen
    by ``policy`` (``uniform`` over the bins present, or ``proportional`` to their sizes),
    then ``group_size`` blocks are drawn from it without replacement, or with replacement
    when the bin has fewer blocks (reported once, at construction). A bin with a single
    block can only form groups of copies of that block: zero spread across the group. That
    is allowed (its mean still counts) but warned about.

    With ``world_size`` ranks, the global batch has ``groups_per_batch * world_size``
    groups and rank ``r`` yields groups ``r*G .. (r+1)*G − 1``.
    """

    kind = "groups"

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        groups_per_batch: int = 2,
        group_size: int = 15,
        policy: str = "uniform",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps: int | None = None,
    ):
        super().__init__(seed, rank, world_size, steps)
        z = np.asarray(labels, dtype=np.int64)
        if z.ndim != 1 or z.size == 0:
            raise LsrInputError("no labelled blocks to sample from")
        if (z < 0).any():
            raise ValueError("labels must be ≥ 0 (exclude unlabelled blocks first)")
        if policy not in POLICIES:
            raise LsrInputError(f"unknown group policy '{policy}' (choose {', '.join(POLICIES)})")
        if group_size < 2:
            raise LsrInputError(f"group size must be at least 2, got {group_size}")
        if groups_per_batch < 1:
            raise LsrInputError(f"groups per batch must be at least 1, got {groups_per_batch}")
        self.groups_per_batch = int(groups_per_batch)
        self.group_size = int(group_size)
        self.policy = policy
        self.bins = np.unique(z)
        self.members = [np.flatnonzero(z == b) for b in self.bins]
        sizes = np.array([m.size for m in self.members], dtype=np.float64)
        if policy == "uniform":
            self.bin_p = np.full(len(self.bins), 1.0 / len(self.bins))
        else:
            self.bin_p = sizes / sizes.sum()
        small = {int(b): int(s) for b, s in zip(self.bins, sizes, strict=True) if s < group_size}
        self.small_bins = small
        if small:
            msg = (
                f"bins with fewer than {group_size} blocks are sampled with replacement: "
                + ", ".join(f"z={b} ({n} block{'s' * (n != 1)})" for b, n in small.items())
            )
            singles = [b for b, n in small.items() if n == 1]
            if singles:
                msg += (
                    f"; bins {singles} have a single block, so their groups are copies of it "
                    "with zero spread"
                )
            warnings.warn(msg, SamplerWarning, stacklevel=2)  # once: no log line beside it

    @property
    def batch_size(self) -> int:
        """Blocks per batch on this rank."""
        return self.groups_per_batch * self.group_size

    def global_batch(self, step: int) -> list[BatchKey]:
        """All ranks' groups for ``step`` (rank ``r`` keeps groups ``r*G .. (r+1)*G − 1``)."""
        rng = _rng(self.seed, step, 0x6C7372)
        n_groups = self.groups_per_batch * self.world_size
        chosen = rng.choice(len(self.bins), size=n_groups, p=self.bin_p)
        keys: list[BatchKey] = []
        base = step * n_groups * self.group_size
        for g, b in enumerate(chosen):
            members = self.members[b]
            replace = members.size < self.group_size
            picks = rng.choice(members, size=self.group_size, replace=replace)
            for j, idx in enumerate(picks):
                keys.append((int(idx), g, base + g * self.group_size + j))
        return keys

    def batch(self, step: int) -> list[BatchKey]:
        """This rank's keys for ``step``: whole groups only."""
        keys = self.global_batch(step)
        per_rank = self.batch_size
        return keys[self.rank * per_rank : (self.rank + 1) * per_rank]


class ShuffledBatchSampler(_StepSampler):
    """Plain shuffled batches (intra loss): epochs of random permutations, ``batch_size`` each.

    The run is one endless stream of items: epoch ``e`` is a permutation seeded by
    ``(seed, e)``; global step ``s`` takes stream positions ``s*B*W .. (s+1)*B*W − 1`` and
    rank ``r`` its slice of ``B``. Every block is its own group (group = position in the
    global batch).
    """

    kind = "shuffled"

    def __init__(
        self,
        n_items: int,
        batch_size: int = 30,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps: int | None = None,
    ):
        super().__init__(seed, rank, world_size, steps)
        if n_items < 1:
            raise LsrInputError("no labelled blocks to sample from")
        if batch_size < 1:
            raise LsrInputError(f"batch size must be at least 1, got {batch_size}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, _rng(self.seed, epoch, 0x736866).permutation(self.n_items))
        return self._perm_cache[1]

    def batch(self, step: int) -> list[BatchKey]:
        per_step = self.batch_size * self.world_size
        start = step * per_step + self.rank * self.batch_size
        keys: list[BatchKey] = []
        for j in range(self.batch_size):
            pos = start + j
            epoch, offset = divmod(pos, self.n_items)
            keys.append((int(self._perm(epoch)[offset]), self.rank * self.batch_size + j, pos))
        return keys
