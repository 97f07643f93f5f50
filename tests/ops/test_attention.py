"""mlm.ops.attention: matmul attention and the fused-QKV Function against SDPA's math backend,
their gradients, bf16, the query-width buckets, and the model's use of the Function."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mlm.ops import Kernels
from mlm.ops import select
from mlm.ops.attention import CPU_QUERY_BUCKET, MatmulSelfAttention, round_up_width
from model.cases import VARIANTS, assert_same_training, backward_of, make_batch, make_model, variant_id


def test_matmul_self_attention_matches_sdpa_and_its_gradients():
    """The CPU attention Function: SDPA's math-backend output (fp32, 1e-5), analytic gradients
    equal to numerical ones (float64 gradcheck), and bf16 close to fp32."""
    g = torch.Generator().manual_seed(0)
    for b, H in ((1, 1), (1, 2), (3, 1)):  # shapes where q, k, v are views of the input
        qkv = torch.randn(b, 5, 3 * H * 4, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: MatmulSelfAttention.apply(t, H), (qkv,))
    b, s, H, D = 3, 10, 2, 4
    qkv = torch.randn(b, s, 3 * H * D, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: MatmulSelfAttention.apply(t, H), (qkv,))
    qkv32 = qkv.detach().float().requires_grad_()
    q, k, v = (t.transpose(1, 2) for t in qkv32.view(b, s, 3, H, D).unbind(2))  # (b, H, s, D)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * s, H * D)
    upstream = torch.randn(b * s, H * D, generator=g)
    (ref_grad,) = torch.autograd.grad(ref, qkv32, upstream)
    out = MatmulSelfAttention.apply(qkv32, H)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out, qkv32, upstream)[0], ref_grad, atol=1e-5, rtol=1e-5)
    qkv16 = qkv32.detach().bfloat16().requires_grad_()
    low = MatmulSelfAttention.apply(qkv16, H)
    (low_grad,) = torch.autograd.grad(low, qkv16, upstream.bfloat16())
    assert low.dtype == low_grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref.detach(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(low_grad.float(), ref_grad, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("kernels", [Kernels(), Kernels(attention="matmul"), Kernels(attention="sdpa")],
                         ids=["auto", "matmul", "sdpa"])
@pytest.mark.parametrize("seq,queries", [(16, None), (128, None), (128, 48), (200, None), (200, 48)])
def test_attention_matches_sdpa_reference_with_key_mask(seq, queries, kernels):  # auto: matmuls up to 128 keys
    """Every CPU attention path gives F.scaled_dot_product_attention's math-backend result,
    padded keys included (fp32, 1e-5), and its gradients; bf16 stays close."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g, requires_grad=True) for n in (queries or seq, seq, seq))
    key_mask = torch.ones(3, 1, 1, seq, dtype=torch.bool)
    key_mask[1, ..., seq // 2:] = False  # a padded row
    out = select.attention(q, k, v, key_mask, 0.0, kernels)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    low = select.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask, 0.0, kernels)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)


def test_query_width_rounds_up_to_the_bucket_within_the_sequence():
    assert [round_up_width(w, 64) for w in (1, 15, 16, 17, 49, 63, 64)] == [16, 16, 16, 32, 64, 64, 64]
    assert round_up_width(5, 12) == 12 and CPU_QUERY_BUCKET == 16
    q = torch.zeros(2, 4, 8)
    assert select.query_width(17, 64, q, Kernels()) == 32
    assert select.query_width(17, 64, q, Kernels(cpu_buckets=False)) == 17


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v["position"] == "learned"], ids=variant_id)
def test_packed_cpu_batches_use_the_attention_function_and_train_like_the_generic_path(variant, monkeypatch):
    ids, _, labels = make_batch()
    calls = []
    original = MatmulSelfAttention.apply

    def spy(qkv, heads):
        calls.append(qkv.shape)
        return original(qkv, heads)

    monkeypatch.setattr(MatmulSelfAttention, "apply", spy)
    results = []
    for kernels in (Kernels(), Kernels(attention="sdpa")):  # the Function, then q/k/v views and SDPA
        model = make_model(kernels=kernels, **variant).train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    assert calls == [(3, 12, 3 * 32)]  # layer 0 of the first model only; the last layer packs its queries
    assert_same_training(*results, loss_rtol=1e-6, grad_rtol=1e-5)


def test_forced_matmul_runs_the_function_past_the_auto_length_limit(monkeypatch):
    calls = []
    original = MatmulSelfAttention.apply
    monkeypatch.setattr(MatmulSelfAttention, "apply",
                        lambda qkv, heads: calls.append(qkv.shape) or original(qkv, heads))
    ids, _, labels = make_batch(batch=2, seq=150)
    results = []
    for kernels in (Kernels(), Kernels(attention="matmul")):
        model = make_model(kernels=kernels, max_seq_len=150).train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    assert calls == [(2, 150, 3 * 32)]  # only the forced model: auto keeps SDPA beyond 128 tokens
    assert_same_training(*results, loss_rtol=1e-5, grad_rtol=1e-4)
