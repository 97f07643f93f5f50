"""mlm.loop: the shared step (accumulation = one big batch), the pure global batch of a step, and
the masked-LM evaluation with its standard error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import tiny_overrides
from mlm.config import load_config
from mlm.data import prepare_data
from mlm.errors import UserError
from mlm.loop import MaskedBatches, batch_plan, build_collator, evaluate, split_for_rank, train_step
from mlm.model import MLMModel
from mlm.optim import build_optimizer
from mlm.runtime import Runtime
from mlm.tokenizer import model_config_for

CPU = Runtime(torch.device("cpu"), 0, 1, 0, "fp32")


def one_step_setup(corpus_file, data_cache, tmp_path, **extra):
    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, tmp_path, **{"model.dropout": 0.0, **extra}))
    prepared = prepare_data(cfg)
    torch.manual_seed(0)
    model = MLMModel(model_config_for(cfg.model, prepared.tokenizer))
    batches = MaskedBatches(prepared.train, build_collator(cfg.collate, prepared.tokenizer), 32, seed=0)
    return cfg, model, batches.get(0), prepared


def optimizer_for(model, cfg):
    t = cfg.train
    return build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, torch.device("cpu"))


def test_gradient_accumulation_4x8_matches_batch_32(corpus_file, data_cache, tmp_path):
    cfg, model_a, batch, _ = one_step_setup(corpus_file, data_cache, tmp_path)
    model_b = type(model_a)(model_a.cfg)
    model_b.load_state_dict(model_a.state_dict())
    results = []
    for model, micro in ((model_a, 32), (model_b, 8)):
        results.append(train_step(model, optimizer_for(model, cfg), split_for_rank(batch, 0, 1, micro, 32 // micro),
                                  CPU, 1.0))
    assert results[0].targets == results[1].targets > 0
    assert abs(results[0].loss - results[1].loss) < 1e-5
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0, msg=name)


def test_a_non_finite_loss_skips_the_update():
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"input_ids": torch.ones(2, 2), "labels": torch.zeros(2, 1)}
    nan_loss = lambda m, b: (m(b["input_ids"]) * float("nan")).sum()  # noqa: E731
    result = train_step(model, opt, [batch], CPU, 1.0, loss_fn=nan_loss)
    assert result.skipped and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batch_arithmetic_is_checked_with_numbers():
    with pytest.raises(UserError, match=r"train.batch_size \(32\) must equal train.micro_batch_size \(6\) .* "
                                        r"world size \(2\); 32 is not divisible by 6 × 2 = 12"):
        batch_plan(32, 6, 2)
    assert batch_plan(32, 4, 2) == (4, 4)
    assert batch_plan(32, 0, 2) == (16, 1)


def test_global_batch_is_a_pure_function_of_step(corpus_file, data_cache, tmp_path):
    _, _, batch, _ = one_step_setup(corpus_file, data_cache, tmp_path)
    _, _, again, _ = one_step_setup(corpus_file, data_cache, tmp_path)
    for k in batch:
        assert torch.equal(batch[k], again[k])


def test_evaluation_reports_accuracy_with_its_mask_and_block_clustered_standard_errors(corpus_file, data_cache, tmp_path):
    cfg, model, _, prepared = one_step_setup(corpus_file, data_cache, tmp_path)
    collator = build_collator(cfg.collate, prepared.tokenizer)
    batches, opt = MaskedBatches(prepared.train, collator, 32, seed=0), optimizer_for(model, cfg)
    for step in range(40):  # a little training, so that some predictions are right
        train_step(model, opt, [batches.get(step)], CPU, 1.0)
    model.eval()
    metrics = evaluate(model, prepared.validation, collator, CPU, 16, 0, seed=7)
    # Recompute from per-block counts, by hand.
    correct, masked = [], []
    with torch.no_grad():
        for start in range(0, len(prepared.validation), 16):
            idx = np.arange(start, min(len(prepared.validation), start + 16))
            batch = collator(prepared.validation[idx], generator=np.random.default_rng([7, start // 16]))
            out = model(batch["input_ids"], labels=batch["labels"])
            hits = (out.logits.argmax(-1) == out.target).tolist()
            rows = (batch["labels"] != -100).nonzero()[:, 0].tolist()
            for r in range(len(idx)):
                mine = [h for h, row in zip(hits, rows) if row == r]
                correct.append(sum(mine))
                masked.append(len(mine))
    c, n = np.array(correct, float), np.array(masked, float)
    accuracy = c.sum() / n.sum()
    k = int((n > 0).sum())
    stderr = math.sqrt(k / (k - 1) * ((c - accuracy * n) ** 2).sum()) / n.sum()
    assert metrics["eval_masked_tokens"] == int(n.sum())
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert metrics["eval_accuracy_stderr_blocks"] == pytest.approx(stderr)
    binomial = math.sqrt(accuracy * (1 - accuracy) / n.sum())
    assert metrics["eval_accuracy_stderr"] == pytest.approx(binomial)
    assert accuracy > 0.02 and 0.5 * binomial < stderr < 3 * binomial  # the same order of magnitude


def test_a_mask_rate_schedule_masks_at_the_scheduled_rate_as_a_pure_function_of_progress(corpus_file, data_cache,
                                                                                          tmp_path):
    from mlm.loop import mask_rates

    cfg = load_config(None, tiny_overrides(corpus_file, data_cache, tmp_path, **{
        "collate.mlm_probability": 0.4, "collate.schedule.kind": "linear",
        "collate.schedule.mlm_probability_end": 0.1}))
    prepared = prepare_data(cfg)
    assert mask_rates(cfg.collate, 0.5)[0] == pytest.approx(0.25)

    def fresh() -> MaskedBatches:
        return MaskedBatches(prepared.train, build_collator(cfg.collate, prepared.tokenizer), 256, seed=0,
                             schedule=cfg.collate)

    batches = fresh()
    for fraction, rate in ((0.0, 0.4), (0.5, 0.25), (1.0, 0.1)):
        labels = torch.cat([batches.get(step, fraction)["labels"] for step in range(4)])  # ~30,000 tokens
        measured = (labels != -100).float().mean().item() * 32 / 31  # [CLS] is never eligible
        assert abs(measured - rate) < 0.015, (fraction, measured)  # SE < 0.003 at these sizes
    # A resumed run (a fresh object) makes the same batch for the same (step, fraction).
    assert torch.equal(fresh().get(7, 0.3)["input_ids"], batches.get(7, 0.3)["input_ids"])
