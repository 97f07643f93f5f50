"""mlm.padding: the one padding mechanism (collator, fine-tuning, scoring, export)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlm.padding import RowGrid, flatten_rows, pad_batch


def test_pad_batch_pads_to_the_longest_row_with_a_mask():
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.int64


def test_equal_rows_need_no_mask_and_multiples_round_the_width_up():
    assert RowGrid([4, 4]).valid is None
    grid = RowGrid([4, 4], multiple_of=8)
    assert grid.width == 8 and grid.valid is not None and grid.valid.sum() == 8
    padded = grid.pad("x", [np.arange(4), np.arange(4)], np.int64, -1)
    assert padded.tolist() == [[0, 1, 2, 3, -1, -1, -1, -1]] * 2


def test_lists_arrays_and_tensors_flatten_alike_and_none_is_nan_in_float_rows():
    rows = [[1, 2], [3]]
    expected = [1, 2, 3]
    assert flatten_rows("ids", rows, np.int64, 3).tolist() == expected
    assert flatten_rows("ids", [np.array(r) for r in rows], np.int64, 3).tolist() == expected
    assert flatten_rows("ids", [torch.tensor(r) for r in rows], np.int64, 3).tolist() == expected
    words = flatten_rows("word_ids", [[None, 0], [1]], np.float64, 3)
    assert np.isnan(words[0]) and words[1:].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("rows, message", [
    ([np.array([1], dtype=np.int32), np.array([2], dtype=np.int64)], "mix"),
    ([[1, "a"]], "integers only"),
    ([np.zeros((2, 2), dtype=np.int64)], "1-D"),
    ([np.array([1.5])], "integer dtype"),
])
def test_mixed_or_malformed_rows_are_refused_with_the_fix(rows, message):
    with pytest.raises(ValueError, match=message):
        flatten_rows("input_ids", rows, np.int64, sum(len(r) for r in rows))
