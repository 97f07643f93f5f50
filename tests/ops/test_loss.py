"""mlm.ops.loss: SummedCrossEntropy against torch in any chunking and dtype, the CPU row buckets,
and the model's filler rows, chunked loss and query buckets training like the dense model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlm.ops import Kernels
from mlm.ops import select
from mlm.ops.attention import CPU_QUERY_BUCKET
from mlm.ops.loss import CPU_ROW_BUCKET, IGNORE_INDEX, SummedCrossEntropy, round_up_rows
from model.cases import SPECIAL, VOCAB, assert_sparse_trains_like_dense


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [0, 64, 50])
def test_summed_cross_entropy_matches_torch_in_any_chunking(dtype, chunk):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(150, 40, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, 40, (150,), generator=g)
    target[::7] = -100
    loss = SummedCrossEntropy.apply(logits, target, chunk)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)


@pytest.mark.parametrize("m,total", [(0, 100), (10, 100), (64, 100), (70, 100), (70, 80), (100, 100)])
def test_round_up_rows_adds_distinct_spread_unlabelled_filler(m, total):
    g = torch.Generator().manual_seed(m + total)
    predict = torch.zeros(total, dtype=torch.bool)
    predict[torch.randperm(total, generator=g)[:m]] = True
    picked = predict.nonzero().squeeze(1)
    rows = round_up_rows(picked, predict)
    assert torch.equal(rows[:m], picked)
    assert rows.shape[0] == min(total, -(-m // CPU_ROW_BUCKET) * CPU_ROW_BUCKET)
    assert rows.unique().shape[0] == rows.shape[0]  # distinct
    assert not predict[rows[m:]].any()  # the filler is unlabelled
    kernels_off = Kernels(cpu_buckets=False)
    assert select.pad_predicted_rows(picked, predict, kernels_off) is picked
    assert torch.equal(select.pad_predicted_rows(picked, predict, Kernels()), rows)


def test_filler_rows_add_nothing_to_the_summed_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 40, generator=g)
    target = torch.randint(0, 40, (64,), generator=g)
    target[50:] = IGNORE_INDEX
    for kernels in (Kernels(), Kernels(cpu_buckets=False)):
        loss = select.summed_cross_entropy(logits, target, kernels)
        torch.testing.assert_close(loss, F.cross_entropy(logits[:50], target[:50], reduction="sum"))


@pytest.mark.parametrize("kernels", [Kernels(), Kernels(cpu_buckets=False)], ids=["buckets", "exact"])
def test_cpu_row_filler_chunked_loss_and_query_bucket_train_the_same(kernels, monkeypatch):
    """At a size where the CPU eager path pads the labelled rows to a multiple of 64 (filler
    rows), computes the loss in 64-row chunks and pads the last layer's queries to a multiple
    of 16 narrower than the sequence, loss and gradients equal the dense model's."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(len(SPECIAL), VOCAB, (6, 64), generator=g)
    labels = torch.where(torch.rand(6, 64, generator=g) < 0.25, ids, torch.full_like(ids, -100))
    m = int((labels != -100).sum())
    assert m % CPU_ROW_BUCKET != 0 and m > CPU_ROW_BUCKET  # filler, 2+ chunks
    widths, chunks = [], []
    original_attention, original_loss = select.attention, SummedCrossEntropy.apply

    def attention_spy(q, k, v, key_mask, dropout_p, kernels):
        widths.append(q.shape[-2])
        return original_attention(q, k, v, key_mask, dropout_p, kernels)

    def loss_spy(logits, target, chunk):
        chunks.append((logits.shape[0], chunk))
        return original_loss(logits, target, chunk)

    monkeypatch.setattr(select, "attention", attention_spy)
    monkeypatch.setattr(SummedCrossEntropy, "apply", loss_spy)
    assert_sparse_trains_like_dense(ids, labels, kernels, max_seq_len=64)
    # Full layers run MatmulSelfAttention; only the last layer's packed queries reach `attention`.
    most_queries = int((labels != -100).sum(1).max())
    assert len(widths) == 1 and widths[0] < 64
    if kernels.cpu_buckets:
        assert widths[0] % CPU_QUERY_BUCKET == 0 and chunks == [(-(-m // 64) * 64, CPU_ROW_BUCKET)]
    else:
        assert widths[0] == most_queries and chunks == [(m, 0)]
