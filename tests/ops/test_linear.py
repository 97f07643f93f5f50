"""mlm.ops.linear: OneDNNLinear against F.linear and its gradients, and which linears the model
sends through it. This torch build must have oneDNN's op for the Function to run; the "auto"
choice uses it only on AVX-512 CPUs, so on others these tests force it with Kernels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlm.ops import PLAIN, Kernels
from mlm.ops.linear import ONEDNN_LINEAR_FASTER, ONEDNN_LINEAR_OP, OneDNNLinear, onednn_linear_faster
from model.cases import VOCAB, assert_same_training, backward_of, make_batch, make_model

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags
needs_op = pytest.mark.skipif(not ONEDNN_LINEAR_OP,
                              reason="this torch build lacks oneDNN's mkldnn._linear_pointwise op")


def test_availability_flags_are_consistent():
    assert ONEDNN_LINEAR_FASTER == onednn_linear_faster()
    assert not ONEDNN_LINEAR_FASTER or ONEDNN_LINEAR_OP
    assert ONEDNN_LINEAR_FASTER == (ONEDNN_LINEAR_OP and torch.backends.cpu.get_cpu_capability() == "AVX512")


@needs_op
@pytest.mark.parametrize("input_grad_min_rows", [1, 10**9], ids=["onednn-input-grad", "mkl-input-grad"])
def test_onednn_linear_matches_f_linear_and_its_gradients(input_grad_min_rows):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 24, generator=g, requires_grad=True)
    weight = (0.2 * torch.randn(40, 24, generator=g)).requires_grad_()
    bias = torch.randn(40, generator=g, requires_grad=True)
    strided = torch.randn(24, 50, generator=g).t().requires_grad_()  # (50, 24), not contiguous
    single = torch.randn(24, generator=g, requires_grad=True)  # one row, 1-D
    for x, b in ((x, bias), (x, None), (strided, bias), (single, bias)):
        out = OneDNNLinear.apply(x, weight, b, input_grad_min_rows)
        ref = F.linear(x.double(), weight.double(), None if b is None else b.double())
        assert out.shape == (*x.shape[:-1], 40) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        upstream = torch.randn(out.shape, generator=g)
        inputs = (x, weight) if b is None else (x, weight, b)
        grads = torch.autograd.grad(out, inputs, upstream)
        ref_grads = torch.autograd.grad(ref, inputs, upstream.double())
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-4)


def count_onednn_calls(monkeypatch) -> list:
    """Weight shapes of the OneDNNLinear calls from now on."""
    calls = []
    original = OneDNNLinear.apply

    def spy(x, weight, bias):
        calls.append(tuple(weight.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(OneDNNLinear, "apply", spy)
    return calls


@needs_op
def test_linear_layers_use_onednn_only_in_fp32_eager_cpu_and_train_the_same(monkeypatch):
    calls = count_onednn_calls(monkeypatch)
    ids, _, labels = make_batch()
    results = []
    for kernels in (Kernels(linear="onednn"), Kernels(linear="torch")):
        model = make_model(kernels=kernels).train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    # every linear of the first model: per layer qkv, out, up, down (last layer: k/v and q
    # slices instead of qkv), then the head's dense and the tied decoder
    assert len(calls) == 4 + 5 + 2 and (VOCAB, 32) in calls
    assert_same_training(*results, loss_rtol=1e-6, grad_rtol=1e-5)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        make_model(kernels=Kernels(linear="onednn"))(ids, labels=labels)
    assert calls == []  # bf16 autocast keeps F.linear (torch runs it on oneDNN already)


def test_auto_uses_onednn_exactly_on_avx512_cpus_while_mkldnn_is_enabled(monkeypatch):
    calls = count_onednn_calls(monkeypatch)
    ids, _, labels = make_batch()
    results = []
    for kernels in (Kernels(), PLAIN):
        model = make_model(kernels=kernels).train()
        results.append(backward_of(model, model(ids, labels=labels).loss))
    assert len(calls) == (4 + 5 + 2 if ONEDNN_LINEAR_FASTER else 0)
    assert_same_training(*results, loss_rtol=1e-6, grad_rtol=1e-5)
    calls.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        make_model()(ids, labels=labels)
    assert calls == []
