"""MLMModel: sparse vs dense head, unpadding, special ids, loss, precision, saving, errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mlm.config import ConfigError, ModelConfig
from mlm import model as model_module
from mlm.model import MLMModel, MLMOutput

SPECIAL = [0, 1, 2, 3, 4]
VOCAB = 64


def make_cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_seq_len=16, special_token_ids=list(SPECIAL), layer_norm_eps=1e-12)
    base.update(overrides)
    return ModelConfig(**base)


def make_model(seed: int = 0, **overrides) -> MLMModel:
    torch.manual_seed(seed)
    return MLMModel(make_cfg(**overrides)).eval()


def make_batch(batch: int = 3, seq: int = 12, seed: int = 1, lengths: list[int] | None = None):
    """Random non-special ids, ~30% labelled positions (at least one per row); optional right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if lengths is not None:
        for row, n in enumerate(lengths):
            mask[row, n:] = 0
            ids[row, n:] = 0  # the pad id
    pick = (torch.rand(batch, seq, generator=g) < 0.3) & (mask == 1)
    pick[:, 0] = mask[:, 0] == 1
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    return ids, mask, labels


VARIANTS = [dict(norm=n, position=p, activation=a)
            for n, p, a in itertools.product(("pre", "post"), ("learned", "rotary"), ("gelu", "geglu"))]


def variant_id(v: dict) -> str:
    return "-".join(v.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_sparse_logits_match_dense_at_masked_positions(variant):
    model = make_model(**variant)
    ids, _, labels = make_batch()
    with torch.no_grad():
        sparse = model(ids, labels=labels)
        dense = model(ids)
    where = labels != -100
    assert isinstance(sparse, MLMOutput)
    assert sparse.logits.shape == (int(where.sum()), VOCAB)
    assert dense.logits.shape == (*ids.shape, VOCAB) and dense.loss is None and dense.target is None
    torch.testing.assert_close(sparse.logits, dense.logits[where], rtol=0, atol=1e-5)
    assert torch.equal(sparse.target, labels[where])


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_unpadded_matches_padded_and_unbatched(variant):
    model = make_model(**variant)
    lengths = [12, 7, 3]
    ids, mask, labels = make_batch(lengths=lengths)
    real = mask.bool()
    with torch.no_grad():
        unpadded_h = model.encode(ids, mask)
        unpadded = model(ids, mask, labels=labels)
        unpadded_dense = model(ids, mask)
        model.unpad = False  # same padded batch on the (b, s) grid with a key mask
        padded_h = model.encode(ids, mask)
        padded = model(ids, mask, labels=labels)
        padded_dense = model(ids, mask)
        model.unpad = True
        alone = [model.encode(ids[i:i + 1, :n]) for i, n in enumerate(lengths)]  # no padding at all
    torch.testing.assert_close(unpadded_h[real], padded_h[real], rtol=0, atol=1e-5)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(unpadded_h[i, :n], alone[i][0], rtol=0, atol=1e-5)
    assert torch.all(unpadded_h[~real] == 0)
    torch.testing.assert_close(unpadded.logits, padded.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(unpadded.loss, padded.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(unpadded_dense.logits[real], padded_dense.logits[real], rtol=0, atol=1e-5)


def test_padded_backward_matches_and_survives_an_empty_row():
    ids, mask, labels = make_batch(lengths=[12, 5, 0])
    grads = []
    for unpad in (True, False):
        model = make_model(position="rotary").train()
        model.unpad = unpad
        out = model(ids, mask, labels=labels)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert torch.isfinite(out.loss)
    for name in grads[0]:
        assert torch.isfinite(grads[0][name]).all(), name
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_all_ones_mask_takes_the_dense_path():
    model = make_model()
    ids, mask, labels = make_batch()
    with torch.no_grad():
        a = model(ids, mask, labels=labels)
        b = model(ids, None, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("bias", [True, False])
def test_special_token_logits_are_minus_inf_with_zero_probability(bias):
    model = make_model(bias=bias)
    ids, mask, labels = make_batch(lengths=[12, 9, 4])
    with torch.no_grad():
        outs = [model(ids, mask).logits.reshape(-1, VOCAB), model(ids, mask, labels=labels).logits,
                model(ids).logits.reshape(-1, VOCAB)]
    for logits in outs:
        assert torch.all(logits[:, SPECIAL] == float("-inf"))
        assert torch.isfinite(logits[:, len(SPECIAL):]).all()
        probs = logits.softmax(-1)
        assert torch.all(probs[:, SPECIAL] == 0)
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))


def test_loss_is_cross_entropy_of_dense_logits_and_sum_is_mean_times_count():
    model = make_model()
    ids, _, labels = make_batch()
    with torch.no_grad():
        mean = model(ids, labels=labels)
        total = model(ids, labels=labels, reduction="sum")
        dense = model(ids).logits
    where = labels != -100
    expected = F.cross_entropy(dense[where], labels[where])
    torch.testing.assert_close(mean.loss, expected, rtol=1e-6, atol=1e-6)
    expected_ignore = F.cross_entropy(dense.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mean.loss, expected_ignore, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(total.loss, mean.loss * int(where.sum()), rtol=1e-6, atol=1e-5)
    assert mean.loss.dtype == torch.float32


def backward_of(model: MLMModel, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, gradient of every parameter) after `loss.backward()`."""
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_training(a, b, loss_rtol: float, grad_rtol: float, atol: float = 1e-6) -> None:
    """Two `backward_of` results: equal losses, equal gradients for every parameter."""
    torch.testing.assert_close(a[0], b[0], rtol=loss_rtol, atol=atol)
    for name, grad in a[1].items():
        torch.testing.assert_close(grad, b[1][name], rtol=grad_rtol, atol=atol, msg=name)


def assert_sparse_trains_like_dense(ids, labels, **overrides) -> None:
    """The model's own loss (sparse head, CPU filler rows, chunked loss) and the cross-entropy
    of its dense logits: equal values, and equal gradients for every parameter."""
    results = []
    for sparse in (True, False):
        model = make_model(**overrides).train()
        if sparse:
            loss = model(ids, labels=labels).loss
        else:
            logits = model(ids).logits
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
        results.append(backward_of(model, loss))
    assert_same_training(*results, loss_rtol=1e-5, grad_rtol=1e-4)


@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_sparse_gradients_match_dense_loss_gradients(fraction):
    """The sparse path (last layer and head on labelled rows, CPU filler rows) trains the same."""
    ids, _, labels = make_batch()
    if fraction == 1.0:
        labels = ids.clone()
    assert_sparse_trains_like_dense(ids, labels)


def test_cpu_row_filler_chunked_loss_and_query_bucket_train_the_same(monkeypatch):
    """At a size where the CPU eager path pads the labelled rows to a multiple of 64 (filler
    rows), computes the loss in 64-row chunks and pads the last layer's queries to a multiple
    of 16 narrower than the sequence, loss and gradients equal the dense model's."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(len(SPECIAL), VOCAB, (6, 64), generator=g)
    labels = torch.where(torch.rand(6, 64, generator=g) < 0.25, ids, torch.full_like(ids, -100))
    m = int((labels != -100).sum())
    assert m % model_module.CPU_ROW_BUCKET != 0 and m > model_module.CPU_ROW_BUCKET  # filler, 2+ chunks
    widths = []
    original = model_module.attention

    def spy(q, k, v, key_mask, dropout_p):
        widths.append(q.shape[-2])
        return original(q, k, v, key_mask, dropout_p)

    monkeypatch.setattr(model_module, "attention", spy)
    assert_sparse_trains_like_dense(ids, labels, max_seq_len=64)
    # Full layers run MatmulSelfAttention; only the last layer's packed queries reach `attention`.
    assert len(widths) == 1 and widths[0] < 64 and widths[0] % model_module.CPU_QUERY_BUCKET == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [0, 64, 50])
def test_summed_cross_entropy_matches_torch_in_any_chunking(dtype, chunk):
    from mlm.model import SummedCrossEntropy

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


def test_no_labelled_token_gives_zero_mean_loss_and_finite_grad():
    model = make_model().train()
    ids, _, _ = make_batch()
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, VOCAB) and out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_on_cpu_runs_and_is_close_to_fp32():
    model = make_model(position="rotary", activation="geglu")
    ids, mask, labels = make_batch(lengths=[12, 8, 5])
    with torch.no_grad():
        ref = model(ids, mask, labels=labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids, mask, labels=labels)
            low_dense = model(ids, mask)
    assert low.loss.dtype == torch.float32  # the loss is computed in fp32
    assert low.logits.dtype == low_dense.logits.dtype == torch.bfloat16  # logits in the compute dtype
    finite = torch.isfinite(ref.logits)
    assert torch.equal(finite, torch.isfinite(low.logits))
    torch.testing.assert_close(low.logits[finite].float(), ref.logits[finite], rtol=0, atol=0.05)
    assert abs(low.loss.item() - ref.loss.item()) < 0.02 * ref.loss.item()
    # and a backward pass under autocast produces finite fp32 gradients
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, labels=labels)
    out.loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("variant", [dict(), dict(norm="post", position="rotary", activation="geglu",
                                                   bias=False, dropout=0.1, attention_dropout=0.1)],
                         ids=["default", "post-rotary-geglu-nobias-dropout"])
def test_a_few_optimizer_steps_reduce_the_loss(variant):
    model = make_model(**variant).train()
    ids, mask, labels = make_batch(lengths=[12, 10, 6])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(15):
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, load_model, save_file, save_model

    model = make_model(position="rotary")
    ids, mask, labels = make_batch(lengths=[12, 6, 9])
    with torch.no_grad():
        ref = model(ids, mask, labels=labels)
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys)) and not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
    assert not any("cos" in k or "sin" in k or "special" in k for k in keys)  # derived buffers are not saved

    save_model(model, str(tmp_path / "a.safetensors"))
    save_file(model.state_dict(), str(tmp_path / "b.safetensors"))
    for path, loader in ((tmp_path / "a.safetensors", "load_model"), (tmp_path / "b.safetensors", "state_dict")):
        fresh = make_model(seed=123, position="rotary")
        if loader == "load_model":
            missing, unexpected = load_model(fresh, str(path))
            assert not missing and not unexpected
        else:
            fresh.load_state_dict(load_file(str(path)), strict=True)
        # still tied after loading: the decoder is the embedding matrix itself
        with torch.no_grad():
            out = fresh(ids, mask, labels=labels)
        assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)


def test_encode_shape_and_counts():
    cfg = make_cfg()
    model = MLMModel(cfg)
    ids, mask, _ = make_batch(lengths=[12, 4, 8])
    h = model.encode(ids, mask)
    assert h.shape == (3, 12, 32)
    total = model.num_parameters()
    assert total == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(exclude_embeddings=True) == total - VOCAB * 32 - cfg.max_seq_len * 32
    L, hd, f, V, s = 2, 32, 64, VOCAB, 16
    per_layer = 4 * hd * hd + 2 * hd * f
    expected = 6 * L * per_layer + 12 * L * hd * s + 6 * 0.15 * (hd * hd + hd * V)
    assert model.flops_per_token(s) == pytest.approx(expected)
    assert model.flops_per_token(s, masked_fraction=1.0) > model.flops_per_token(s)


@pytest.mark.parametrize("scaled", [False, True])
def test_residual_init(scaled):
    """BERT's init (all weights N(0, 0.02)) by default; GPT-2's std / sqrt(2 * layers) for the
    projections into the residual stream with model.scaled_residual_init."""
    torch.manual_seed(0)
    model = MLMModel(make_cfg(hidden_size=256, intermediate_size=1024, num_heads=4, num_layers=8,
                              scaled_residual_init=scaled))
    std = 0.02 / math.sqrt(2 * 8) if scaled else 0.02
    for block in model.layers:
        assert block.attn.out.weight.std().item() == pytest.approx(std, rel=0.05)
        assert block.ffn.down.weight.std().item() == pytest.approx(std, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(block.attn.qkv.bias == 0)


def test_invalid_inputs_raise_clear_errors():
    model = make_model()
    too_long = torch.randint(5, VOCAB, (2, 17))
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds model.max_seq_len \(16\)"):
        model(too_long)
    with pytest.raises(ValueError, match="sequence length 17"):
        model.encode(too_long)
    ids = torch.randint(5, VOCAB, (2, 8))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="labels shape"):
        model(ids, labels=ids[:, :4])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, attention_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="reduction"):
        model(ids, labels=ids, reduction="none")
    with pytest.raises(ConfigError, match="vocab_size"):
        MLMModel(make_cfg(vocab_size=0))
    with pytest.raises(ConfigError, match="special_token_ids"):
        MLMModel(make_cfg(special_token_ids=[VOCAB]))


def test_matmul_self_attention_matches_sdpa_and_its_gradients():
    """The CPU attention Function: SDPA's math-backend output (fp32, 1e-5), analytic gradients
    equal to numerical ones (float64 gradcheck), and bf16 close to fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mlm.model import MatmulSelfAttention

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


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v["position"] == "learned"], ids=variant_id)
def test_packed_cpu_batches_use_the_attention_function_and_train_like_the_generic_path(variant, monkeypatch):
    ids, _, labels = make_batch()
    calls = []
    original = model_module.MatmulSelfAttention.apply

    def spy(qkv, heads):
        calls.append(qkv.shape)
        return original(qkv, heads)

    monkeypatch.setattr(model_module.MatmulSelfAttention, "apply", spy)
    results = []
    for function in (True, False):
        if not function:
            monkeypatch.setattr(model_module.SelfAttention, "_matmul_function_applies", lambda *a: False)
        model = make_model(**variant).train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    assert calls == [(3, 12, 3 * 32)]  # layer 0 of the first model only; the last layer packs its queries
    assert_same_training(*results, loss_rtol=1e-6, grad_rtol=1e-5)


@pytest.mark.skipif(not model_module.ONEDNN_FP32_LINEAR, reason="needs an AVX-512 CPU and a torch build with oneDNN")
@pytest.mark.parametrize("input_grad_min_rows", [1, 10**9], ids=["onednn-input-grad", "mkl-input-grad"])
def test_onednn_linear_matches_f_linear_and_its_gradients(input_grad_min_rows, monkeypatch):
    monkeypatch.setattr(model_module, "ONEDNN_INPUT_GRAD_MIN_ROWS", input_grad_min_rows)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 24, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(40, 24, generator=g)).requires_grad_()
    bias = torch.randn(40, generator=g, requires_grad=True)
    strided = torch.randn(24, 50, generator=g).t().requires_grad_()  # (50, 24), not contiguous
    single = torch.randn(24, generator=g, requires_grad=True)  # one row, 1-D
    for x, b in ((x, bias), (x, None), (strided, bias), (single, bias)):
        out = model_module.OneDNNLinear.apply(x, weight, b)
        ref = F.linear(x.double(), weight.double(), None if b is None else b.double())
        assert out.shape == (*x.shape[:-1], 40) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        upstream = torch.randn(out.shape, generator=g)
        inputs = (x, weight) if b is None else (x, weight, b)
        grads = torch.autograd.grad(out, inputs, upstream)
        ref_grads = torch.autograd.grad(ref, inputs, upstream.double())
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-4)


def test_linear_layers_use_onednn_only_in_fp32_eager_cpu_and_train_the_same(monkeypatch):
    calls = []
    original = model_module.OneDNNLinear.apply

    def spy(x, weight, bias):
        calls.append(tuple(weight.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(model_module.OneDNNLinear, "apply", spy)
    ids, _, labels = make_batch()
    available = model_module.ONEDNN_FP32_LINEAR
    results = []
    for onednn in (available, False):
        monkeypatch.setattr(model_module, "ONEDNN_FP32_LINEAR", onednn)
        model = make_model().train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    if available:
        # every linear of the first model: per layer qkv, out, up, down (last layer: k/v and q
        # slices instead of qkv), then the head's dense and the tied decoder
        assert len(calls) == 4 + 5 + 2 and (VOCAB, 32) in calls
    else:
        assert calls == []
    assert_same_training(*results, loss_rtol=1e-6, grad_rtol=1e-5)
    calls.clear()
    monkeypatch.setattr(model_module, "ONEDNN_FP32_LINEAR", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        make_model()(ids, labels=labels)
    assert calls == []  # bf16 autocast keeps F.linear (torch runs it on oneDNN already)


@pytest.mark.parametrize("seq,queries", [(16, None), (128, None), (128, 48), (200, None), (200, 48)])
def test_attention_matches_sdpa_reference_with_key_mask(seq, queries):  # matmul path up to 128 keys on CPU
    """Both CPU attention paths give F.scaled_dot_product_attention's math-backend result,
    padded keys included (fp32, 1e-5), and its gradients; bf16 stays close."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mlm.model import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g, requires_grad=True) for n in (queries or seq, seq, seq))
    key_mask = torch.ones(3, 1, 1, seq, dtype=torch.bool)
    key_mask[1, ..., seq // 2:] = False  # a padded row
    out = attention(q, k, v, key_mask, 0.0)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask, 0.0)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)
