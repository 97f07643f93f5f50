"""MLMModel: sparse vs dense head, unpadding, special ids, loss, precision, saving, errors, and
the same results under every `Kernels` choice (the ops themselves: tests/ops)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlm.config import ConfigError
from mlm.model import MLMModel, MLMOutput
from mlm.ops import PLAIN, Kernels
from mlm.ops import linear as linear_ops
from mlm.ops.linear import ONEDNN_LINEAR_OP
from model.cases import (SPECIAL, VARIANTS, VOCAB, assert_same_training, assert_sparse_trains_like_dense,
                         backward_of, kernels_id, make_batch, make_cfg, make_model, variant_id)

PADDED_GRID = Kernels(unpad=False)  # padded batches on the (b, s) grid with a key mask


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
    grid_model = make_model(kernels=PADDED_GRID, **variant)  # same weights
    lengths = [12, 7, 3]
    ids, mask, labels = make_batch(lengths=lengths)
    real = mask.bool()
    with torch.no_grad():
        unpadded_h = model.encode(ids, mask)
        unpadded = model(ids, mask, labels=labels)
        unpadded_dense = model(ids, mask)
        padded_h = grid_model.encode(ids, mask)
        padded = grid_model(ids, mask, labels=labels)
        padded_dense = grid_model(ids, mask)
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
    for kernels in (Kernels(), PADDED_GRID):
        model = make_model(kernels=kernels, position="rotary").train()
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


@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_sparse_gradients_match_dense_loss_gradients(fraction):
    """The sparse path (last layer and head on labelled rows, CPU filler rows) trains the same."""
    ids, _, labels = make_batch()
    if fraction == 1.0:
        labels = ids.clone()
    assert_sparse_trains_like_dense(ids, labels)


def test_no_labelled_token_gives_zero_mean_loss_and_finite_grad():
    model = make_model().train()
    ids, _, _ = make_batch()
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, VOCAB) and out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("kernels", [Kernels(), PLAIN], ids=["auto", "plain"])
def test_bf16_autocast_on_cpu_runs_and_is_close_to_fp32(kernels):
    model = make_model(kernels=kernels, position="rotary", activation="geglu")
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
    assert list(make_model(kernels=PLAIN, position="rotary").state_dict()) == keys  # kernels are not saved

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


def test_kernels_do_not_change_the_initial_weights():
    """Kernels draw no random numbers: `torch.manual_seed(s); MLMModel(cfg, kernels)` is the same model."""
    ref = make_model(seed=7, position="rotary").state_dict()
    for kernels in (PLAIN, PADDED_GRID, Kernels(attention="matmul")):
        other = make_model(seed=7, kernels=kernels, position="rotary").state_dict()
        assert all(torch.equal(ref[k], other[k]) for k in ref)


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


FORCED = [Kernels(), Kernels(attention="matmul"), Kernels(attention="sdpa"), Kernels(cpu_buckets=False),
          PADDED_GRID] + ([Kernels(linear="onednn"), Kernels(attention="matmul", linear="onednn")]
                          if ONEDNN_LINEAR_OP else [])


@pytest.mark.parametrize("kernels", FORCED, ids=kernels_id)
@pytest.mark.parametrize("variant", [dict(), dict(position="rotary", norm="post", activation="geglu")],
                         ids=["learned-pre-gelu", "rotary-post-geglu"])
def test_every_kernel_choice_trains_like_the_plain_path(kernels, variant):
    """Kernels change how, never what: loss and gradients equal the plain PyTorch path's, on a
    packed and on a padded batch (an empty row included), fp32."""
    for lengths in (None, [12, 5, 0]):
        ids, mask, labels = make_batch(lengths=lengths)
        results = []
        for k in (kernels, PLAIN):
            model = make_model(kernels=k, **variant).train()
            results.append(backward_of(model, model(ids, None if lengths is None else mask, labels=labels).loss))
        assert_same_training(*results, loss_rtol=1e-5, grad_rtol=1e-4)


def test_compiled_model_matches_eager_and_leaves_the_eager_cpu_paths_out(monkeypatch):
    """torch.compile(dynamic=True), the path CUDA users take, traced by Dynamo and AOTAutograd (the
    `aot_eager` backend: no C++ compiler needed): the same loss and gradients as eager, with
    oneDNN's op (forced here where this torch build has it) called only by the eager model."""
    kernels = Kernels(attention="matmul", linear="onednn") if ONEDNN_LINEAR_OP else Kernels()
    calls = []
    original = linear_ops.onednn_linear_product
    monkeypatch.setattr(linear_ops, "onednn_linear_product", lambda *a: calls.append(a[0].shape) or original(*a))
    ids, mask, labels = make_batch(lengths=[12, 9, 4])
    results = []
    for compiled in (False, True):
        model = make_model(kernels=kernels, position="rotary").train()
        step = torch.compile(model, dynamic=True, backend="aot_eager") if compiled else model
        calls.clear()
        results.append(backward_of(model, step(ids, mask, labels=labels).loss))  # padded: unpadding traced too
        assert bool(calls) == (ONEDNN_LINEAR_OP and not compiled)
    assert_same_training(*results, loss_rtol=1e-5, grad_rtol=1e-4)
