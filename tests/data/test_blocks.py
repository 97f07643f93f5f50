"""mlm.data.blocks: BlockDataset random access, epoch_permutation (pinned, machine-independent)
and BatchPlan (the global batch of any step, across epoch boundaries)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from mlm.data import BatchPlan, BlockDataset, epoch_permutation
from tests.data.data_helpers import make_cfg, make_docs, run, write_lines

# ------------------------------------------------------------------------------- BlockDataset


def test_block_dataset_indexing(tmp_path, tok_path):
    docs = make_docs(200, seed=26)
    f = write_lines(tmp_path / "a.txt", docs)
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path, shard_blocks=5))
    ds = prepared.train
    n = len(ds)
    assert len(ds.shards) == -(-n // 5) and n > 20
    everything = np.stack([ds[i] for i in range(n)])
    assert everything.shape == (n, 16) and everything.dtype == np.uint16
    assert (ds[-1] == everything[-1]).all()
    idx = np.array([n - 1, 0, 7, 7, 3, 12])
    assert (ds[idx] == everything[idx]).all()
    assert (ds[[1, 2]] == everything[[1, 2]]).all()
    assert (ds[3:9] == everything[3:9]).all()
    assert ds[np.array([], dtype=np.int64)].shape == (0, 16)
    assert ds[np.arange(6).reshape(2, 3)].shape == (2, 3, 16)
    with pytest.raises(IndexError):
        ds[n]
    with pytest.raises(IndexError):
        ds[np.array([0, n])]
    clone = pickle.loads(pickle.dumps(ds))
    assert (clone[idx] == everything[idx]).all()
    again = BlockDataset.from_index(prepared.directory, "train")
    assert len(again) == n and (again[idx] == everything[idx]).all()


def test_empty_validation_when_fraction_is_zero(tmp_path, tok_path):
    f = write_lines(tmp_path / "a.txt", make_docs(30, seed=27))
    prepared, _ = run(make_cfg(tmp_path, [f], tok_path))
    assert len(prepared.validation) == 0
    assert prepared.validation[np.array([], dtype=np.int64)].shape == (0, 16)


def test_from_index_without_a_prepared_split_is_a_clear_error(tmp_path):
    from mlm.errors import UserError

    with pytest.raises(UserError, match="no prepared split 'train'"):
        BlockDataset.from_index(tmp_path, "train")


# ------------------------------------------------------------------------------- epoch_permutation


PINNED_0_0 = [6, 8, 0, 9, 3, 1, 4, 2, 7, 5]
PINNED_1234_7 = [5, 3, 0, 9, 6, 7, 2, 8, 1, 4]


def test_epoch_permutation():
    p = epoch_permutation(1000, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    assert (p == epoch_permutation(1000, 3, 0)).all()
    assert not (p == epoch_permutation(1000, 3, 1)).all()
    assert not (p == epoch_permutation(1000, 4, 0)).all()
    assert epoch_permutation(0, 0, 0).shape == (0,)
    assert epoch_permutation(1, 0, 5).tolist() == [0]
    # pinned values: the same permutation on every machine and numpy version
    assert epoch_permutation(10, seed=0, epoch=0).tolist() == PINNED_0_0
    assert epoch_permutation(10, seed=1234, epoch=7).tolist() == PINNED_1234_7
    with pytest.raises(ValueError):
        epoch_permutation(-1, 0, 0)


def test_epoch_permutation_matches_a_pure_python_reference():
    mask = (1 << 64) - 1

    def mix(z):
        z &= mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for seed, epoch in ((0, 0), (-5, 3), (2 ** 40, 11)):
        base = mix(mix(seed) + 0x9E3779B97F4A7C15 * (epoch + 1))
        keys = [mix(i * 0x9E3779B97F4A7C15 + base) for i in range(300)]
        reference = sorted(range(300), key=lambda i: (keys[i], i))
        assert epoch_permutation(300, seed, epoch).tolist() == reference


# ------------------------------------------------------------------------------- BatchPlan


def formula(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Sample position p of the endless stream is block epoch_permutation(n, seed, p // n)[p % n]."""
    return [int(epoch_permutation(n, seed, p // n)[p % n]) for p in range(step * batch_size, (step + 1) * batch_size)]


@pytest.mark.parametrize("n, batch_size", [(10, 4), (7, 7), (5, 12), (100, 3)])
def test_batch_plan_gives_the_formula_s_blocks_at_every_step(n, batch_size):
    plan = BatchPlan(n, batch_size, seed=11)
    for step in [0, 1, 2, 3, 17, 5, 0, 40]:  # out of order too: the cache never leaks into the answer
        got = plan.indices(step)
        assert got.dtype == np.int64 and got.shape == (batch_size,)
        assert got.tolist() == formula(n, batch_size, 11, step)


def test_batch_plan_epoch_boundary_inside_a_batch():
    plan = BatchPlan(num_blocks=10, batch_size=4, seed=0)
    step = 2  # positions 8..11: the last two blocks of epoch 0, the first two of epoch 1
    assert plan.indices(step).tolist() == (epoch_permutation(10, 0, 0)[8:].tolist()
                                           + epoch_permutation(10, 0, 1)[:2].tolist())
    assert plan.epoch_of(step) == 0.8 and plan.epoch_of(5) == 2.0
    every_epoch = np.concatenate([plan.indices(s) for s in range(5)])  # 20 samples: exactly two epochs
    assert sorted(every_epoch[:10].tolist()) == list(range(10)) == sorted(every_epoch[10:].tolist())


def test_batch_plan_of_a_batch_larger_than_the_data_spans_several_epochs():
    plan = BatchPlan(num_blocks=3, batch_size=8, seed=5)
    assert plan.indices(1).tolist() == formula(3, 8, 5, 1)
    assert plan.epoch_of(1) == 8 / 3


def test_batch_plan_rejects_empty_data_and_batches():
    with pytest.raises(ValueError, match="num_blocks"):
        BatchPlan(0, 4, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchPlan(4, 0, seed=0)
