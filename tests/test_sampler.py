"""Samplers: same-z groups, policies, small bins, determinism, resume, ranks."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.errors import LsrInputError
from lsr.sampler import GroupBatchSampler, SamplerWarning, ShuffledBatchSampler

LABELS = np.repeat([0, 3, 9], [40, 20, 60])


def _quiet(*args: object, **kwargs: object) -> GroupBatchSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)
        return GroupBatchSampler(*args, **kwargs)  # type: ignore[arg-type]


@given(
    seed=st.integers(0, 2**31),
    g=st.integers(1, 4),
    k=st.integers(2, 20),
    step=st.integers(0, 10_000),
)
@settings(max_examples=40, deadline=None)
def test_groups_share_z_and_have_size_k(seed: int, g: int, k: int, step: int) -> None:
    s = _quiet(LABELS, groups_per_batch=g, group_size=k, seed=seed)
    batch = s.batch(step)
    assert len(batch) == g * k
    by_group: dict[int, list[int]] = {}
    for idx, group, _ in batch:
        by_group.setdefault(group, []).append(idx)
    assert sorted(by_group) == list(range(g))
    for members in by_group.values():
        assert len(members) == k
        assert len({int(LABELS[i]) for i in members}) == 1
        if k <= 20:  # every bin has ≥ 20 blocks: no replacement
            assert len(set(members)) == k
    assert len({d for _, _, d in batch}) == g * k  # draw keys unique


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a = [GroupBatchSampler(LABELS, seed=1).batch(s) for s in range(5)]
    b = [GroupBatchSampler(LABELS, seed=1).batch(s) for s in range(5)]
    c = [GroupBatchSampler(LABELS, seed=2).batch(s) for s in range(5)]
    assert a == b and a != c


def test_policies_uniform_and_proportional() -> None:
    n = 3000
    uni = GroupBatchSampler(LABELS, groups_per_batch=1, group_size=2, policy="uniform")
    prop = GroupBatchSampler(LABELS, groups_per_batch=1, group_size=2, policy="proportional")
    cu = Counter(int(LABELS[uni.batch(s)[0][0]]) for s in range(n))
    cp = Counter(int(LABELS[prop.batch(s)[0][0]]) for s in range(n))
    for z in (0, 3, 9):
        assert cu[z] / n == pytest.approx(1 / 3, abs=0.04)
    for z, size in ((0, 40), (3, 20), (9, 60)):
        assert cp[z] / n == pytest.approx(size / 120, abs=0.04)
    with pytest.raises(LsrInputError, match="policy"):
        GroupBatchSampler(LABELS, policy="greedy")


def test_small_bins_sampled_with_replacement_and_reported_once() -> None:
    labels = np.array([0] * 30 + [5] * 3 + [7])
    with pytest.warns(SamplerWarning) as record:
        s = GroupBatchSampler(labels, groups_per_batch=2, group_size=15, seed=0)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "z=5 (3 blocks)" in msg and "z=7 (1 block)" in msg and "single block" in msg
    assert s.small_bins == {5: 3, 7: 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings while sampling
        seen_single = False
        for step in range(200):
            for g in range(2):
                idx = [i for i, grp, _ in s.batch(step) if grp == g]
                z = set(labels[idx].tolist())
                assert len(z) == 1
                if z == {7}:
                    seen_single = True
                    assert idx == [33] * 15
    assert seen_single


def test_groups_smaller_than_two_rejected() -> None:
    with pytest.raises(LsrInputError, match="at least 2"):
        GroupBatchSampler(LABELS, group_size=1)
    with pytest.raises(LsrInputError, match="no labelled"):
        GroupBatchSampler(np.array([], dtype=int))


@pytest.mark.parametrize("kind", ["groups", "shuffled"])
def test_state_dict_resumes_exactly(kind: str) -> None:
    def make() -> GroupBatchSampler | ShuffledBatchSampler:
        if kind == "groups":
            return GroupBatchSampler(LABELS, seed=7, steps=10)
        return ShuffledBatchSampler(len(LABELS), 30, seed=7, steps=10)

    full = list(make())
    assert len(full) == 10
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["position"] == 4
    second = make()
    second.load_state_dict(state)
    assert len(second) == 6
    assert head + list(second) == full
    other = GroupBatchSampler(LABELS, seed=8) if kind == "groups" else ShuffledBatchSampler(5)
    with pytest.raises(LsrInputError):
        other.load_state_dict(state)


@pytest.mark.parametrize("kind", ["groups", "shuffled"])
def test_a_longer_run_starts_with_the_shorter_runs_batches(kind: str) -> None:
    """Why: benchmarks/study_curve.py reads a 2000-step run's step-300 checkpoint as the
    300-step run; that holds only if the total number of steps does not change the order."""

    def make(steps: int) -> GroupBatchSampler | ShuffledBatchSampler:
        if kind == "groups":
            return GroupBatchSampler(LABELS, 6, 5, seed=11, steps=steps)
        return ShuffledBatchSampler(len(LABELS), 30, seed=11, steps=steps)

    short, long = list(make(7)), list(make(25))
    assert len(short) == 7 and len(long) == 25
    assert long[:7] == short
    assert long[7:14] != short  # not one batch repeated


def test_ranks_take_whole_groups_of_the_global_batch() -> None:
    world = 3
    ranks = [GroupBatchSampler(LABELS, 2, 5, seed=3, rank=r, world_size=world) for r in range(3)]
    for step in range(20):
        global_batch = ranks[0].global_batch(step)
        parts = [r.batch(step) for r in ranks]
        assert [k for part in parts for k in part] == global_batch
        for r, part in enumerate(parts):
            groups = {g for _, g, _ in part}
            assert groups == {2 * r, 2 * r + 1}  # a group never spans ranks
            for g in groups:
                assert len({int(LABELS[i]) for i, gg, _ in part if gg == g}) == 1


def test_shuffled_epochs_cover_every_item_once_across_ranks() -> None:
    n, b, world = 23, 4, 2
    samplers = [ShuffledBatchSampler(n, b, seed=5, rank=r, world_size=world) for r in range(2)]
    stream = []
    for step in range(12):  # 12 × 8 = 96 positions > 4 epochs
        for s in samplers:
            stream += [i for i, _, _ in s.batch(step)]
    for e in range(4):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    first_epoch = stream[:n]
    assert first_epoch != sorted(first_epoch)  # shuffled
    groups = [g for s in samplers for _, g, _ in s.batch(0)]
    assert sorted(groups) == list(range(b * world))  # each block its own group
