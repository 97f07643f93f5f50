"""mlm.ops.select: Kernels, the "auto" choices against the rules the encoder used before the
selector existed (copied below), forced choices, and the plain path everywhere."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from mlm.config import ConfigError
from mlm.ops import PLAIN, Kernels
from mlm.ops import select
from mlm.ops.linear import ONEDNN_LINEAR_OP

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags
CPU, OTHER = "cpu", "meta"  # a meta tensor stands for any non-CPU device


# ---------------------------------------------------------------- the rules before the selector

def old_linear_uses_onednn(x, weight, onednn_fp32_linear: bool) -> bool:
    return (onednn_fp32_linear and torch.backends.mkldnn.enabled
            and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and x.dtype == weight.dtype == torch.float32 and x.numel() > 0 and weight.is_contiguous()
            and not torch.is_autocast_enabled("cpu"))


def old_attention_uses_matmul(q, k) -> bool:
    return q.device.type == "cpu" and q.shape[-2] <= k.shape[-2] <= 128


def old_function_applies(qkv, key_mask, rotary: bool, training: bool, attention_dropout: float) -> bool:
    return (qkv.device.type == "cpu" and not torch.compiler.is_compiling() and key_mask is None
            and not rotary and not (training and attention_dropout > 0) and qkv.shape[1] <= 128)


def old_query_width(width: int, seq: int, q) -> int:
    return min(seq, -(-width // 16) * 16) if q.device.type == "cpu" else width


def old_rows_bucketed(picked) -> bool:
    return picked.device.type == "cpu" and not torch.compiler.is_compiling()


# ---------------------------------------------------------------- Kernels

def test_kernels_is_a_small_frozen_checked_value():
    assert Kernels() == Kernels(attention="auto", linear="auto", cpu_buckets=True, unpad=True)
    assert PLAIN == Kernels(attention="sdpa", linear="torch", cpu_buckets=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Kernels().attention = "sdpa"
    with pytest.raises(ConfigError, match="kernels.attention must be one of auto, sdpa, matmul"):
        Kernels(attention="flash")
    with pytest.raises(ConfigError, match="kernels.linear"):
        Kernels(linear="mkl")
    assert hash(Kernels()) == hash(Kernels())  # usable as a dict key / in Dynamo guards


@pytest.mark.skipif(ONEDNN_LINEAR_OP, reason="this torch build has oneDNN's op: Kernels(linear='onednn') is valid")
def test_forcing_onednn_without_the_op_is_refused():
    with pytest.raises(ValueError, match="needs a torch build with oneDNN"):
        Kernels(linear="onednn")


# ---------------------------------------------------------------- "auto" picks what the encoder picked

@pytest.mark.parametrize("onednn_faster", [True, False], ids=["avx512", "other-cpu"])
def test_auto_linear_choice_is_the_old_rule(onednn_faster):
    weight = torch.zeros(8, 4)
    cases = 0
    for device, dtype, rows, contiguous, autocast, mkldnn in itertools.product(
            (CPU, OTHER), (torch.float32, torch.bfloat16, torch.float64), (0, 3), (True, False), (False, True),
            (True, False)):
        x = torch.zeros(rows, 4, dtype=dtype, device=device)
        w = (weight if contiguous else torch.zeros(4, 8).t()).to(device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                torch.backends.mkldnn.flags(enabled=mkldnn):
            want = old_linear_uses_onednn(x, w, onednn_faster)
            got = select.linear_choice(x, w, Kernels(), onednn_faster=onednn_faster)
        assert got == ("onednn" if want else "torch"), (device, dtype, rows, contiguous, autocast, mkldnn)
        cases += want
    assert cases == (1 if onednn_faster else 0)  # fp32, cpu, non-empty, contiguous, no autocast, mkldnn on


def test_auto_attention_choices_are_the_old_rules():
    for device, sq, s in itertools.product((CPU, OTHER), (1, 48, 128, 129, 200), (16, 128, 129, 200)):
        q, k = torch.zeros(2, 2, sq, 8, device=device), torch.zeros(2, 2, s, 8, device=device)
        want = "matmul" if old_attention_uses_matmul(q, k) else "sdpa"
        assert select.attention_choice(q, k, Kernels()) == want, (device, sq, s)
    for device, s, masked, rotary, training, dropout in itertools.product(
            (CPU, OTHER), (12, 128, 129), (False, True), (False, True), (False, True), (0.0, 0.1)):
        qkv = torch.zeros(2, s, 3 * 32, device=device)
        key_mask = torch.ones(2, 1, 1, s, dtype=torch.bool) if masked else None
        dropout_p = dropout if training else 0.0  # what the model passes
        want = "fused" if old_function_applies(qkv, key_mask, rotary, training, dropout) else "split"
        assert select.self_attention_choice(qkv, key_mask, dropout_p, rotary, Kernels()) == want


def test_auto_buckets_are_the_old_rules():
    for device, width, seq in itertools.product((CPU, OTHER), (1, 16, 17, 40), (12, 64)):
        q = torch.zeros(3, 4, device=device)
        assert select.query_width(width, seq, q, Kernels()) == old_query_width(width, seq, q)
        assert select.cpu_buckets_apply(q, Kernels()) == old_rows_bucketed(q)


def choices_while_compiling(x: torch.Tensor, kernels: Kernels) -> dict:
    """What the selector picks for `x` inside torch.compile (Dynamo traces the choice)."""
    seen = {}

    @torch.compile(backend="eager")
    def step(t):
        seen["linear"] = select.linear_choice(t, t, kernels, onednn_faster=True)
        seen["old_linear"] = old_linear_uses_onednn(t, t, True)
        seen["self_attention"] = select.self_attention_choice(t[None], None, 0.0, False, kernels)
        seen["old_function"] = old_function_applies(t[None], None, False, False, 0.0)
        seen["buckets"] = select.cpu_buckets_apply(t, kernels)
        seen["old_buckets"] = old_rows_bucketed(t)
        return t + 1

    step(x)
    return seen


@pytest.mark.parametrize("kernels", [Kernels(), Kernels(attention="matmul", linear="onednn")
                                     if ONEDNN_LINEAR_OP else Kernels(attention="matmul")], ids=["auto", "forced"])
def test_compiled_code_gets_the_plain_ops(kernels):
    """The CPU Functions, oneDNN's op and the buckets are eager-only, forced or not."""
    eager = dict(linear=select.linear_choice(torch.zeros(4, 4), torch.zeros(4, 4), kernels, onednn_faster=True),
                 self_attention=select.self_attention_choice(torch.zeros(1, 4, 4), None, 0.0, False, kernels))
    assert eager == dict(linear="onednn" if kernels.linear != "torch" else "torch", self_attention="fused")
    seen = choices_while_compiling(torch.zeros(4, 4), kernels)
    assert seen["linear"] == "torch" and not seen["old_linear"]
    assert seen["self_attention"] == "split" and not seen["old_function"]
    assert not seen["buckets"] and not seen["old_buckets"]


# ---------------------------------------------------------------- forced choices and the plain path

def test_forced_choices_apply_wherever_their_implementation_can_compute():
    q_long, k_long = torch.zeros(1, 1, 300, 8), torch.zeros(1, 1, 300, 8)
    q_other = torch.zeros(1, 1, 4, 8, device=OTHER)
    assert select.attention_choice(q_long, k_long, Kernels(attention="matmul")) == "matmul"
    assert select.attention_choice(q_other, q_other, Kernels(attention="matmul")) == "matmul"
    qkv_long = torch.zeros(1, 300, 96)
    assert select.self_attention_choice(qkv_long, None, 0.0, False, Kernels(attention="matmul")) == "fused"
    assert select.self_attention_choice(qkv_long, None, 0.0, False, Kernels()) == "split"
    for cannot in (dict(key_mask=torch.ones(1, 1, 1, 300, dtype=torch.bool)), dict(rotated=True),
                   dict(dropout_p=0.1), dict(qkv=qkv_long.to(OTHER))):
        args = dict(qkv=qkv_long, key_mask=None, dropout_p=0.0, rotated=False) | cannot
        assert select.self_attention_choice(**args, kernels=Kernels(attention="matmul")) == "split", cannot
    if ONEDNN_LINEAR_OP:  # any CPU, mkldnn flag or not; never bf16, autocast or another device
        onednn = Kernels(linear="onednn")
        x, w = torch.zeros(3, 4), torch.zeros(8, 4)
        with torch.backends.mkldnn.flags(enabled=False):
            assert select.linear_choice(x, w, onednn, onednn_faster=False) == "onednn"
        assert select.linear_choice(x.bfloat16(), w.bfloat16(), onednn) == "torch"
        assert select.linear_choice(x.to(OTHER), w.to(OTHER), onednn) == "torch"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert select.linear_choice(x, w, onednn) == "torch"


def test_plain_kernels_pick_the_plain_op_everywhere():
    for device, s in itertools.product((CPU, OTHER), (4, 128, 300)):
        x, w = torch.zeros(3, 4, device=device), torch.zeros(8, 4, device=device)
        q, qkv = torch.zeros(1, 1, s, 8, device=device), torch.zeros(1, s, 96, device=device)
        assert select.linear_choice(x, w, PLAIN, onednn_faster=True) == "torch"
        assert select.attention_choice(q, q, PLAIN) == "sdpa"
        assert select.self_attention_choice(qkv, None, 0.0, False, PLAIN) == "split"
        assert not select.cpu_buckets_apply(q, PLAIN)
        assert select.query_width(5, s, q, PLAIN) == 5
