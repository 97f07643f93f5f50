"""The special-token masking bug: what letting [CLS] through the softmax does to the predictions.

    python scripts/experiments/special_token_bug.py [--config run.yaml] [--out docs/experiments] [--tiny]

The library's head adds -inf to every special id's logit before the softmax, so p(special) is
exactly 0. The buggy variant is the *same weights* with [CLS]'s logit left in: the head's
pre-mask logits (transform, tied decoder, raw bias) with every special id except [CLS] set to
-inf. Then for each masked position, with p = correct and q = buggy:

    KL(p || q) = -log(1 - q([CLS]))  finite: q is p rescaled by (1 - q([CLS])) off [CLS]
    KL(q || p) = +inf                  q([CLS]) > 0 where p([CLS]) = 0

and a position is *hijacked* when the buggy argmax is [CLS]. This is measured on
(1) the shared pretrained checkpoint, trained correctly ([CLS]'s logit always masked, so its
    bias never moved from 0: its logit is just <hidden, embedding of [CLS]>), and
(2) the same checkpoint after `--bug-steps` more steps of a *buggy training* run: the model is
    built with [CLS] missing from its special ids (its logit unmasked, trainable) and the
    collator also treats [CLS] as an ordinary token, so position 0 is masked at the usual rate
    with label [CLS] (and random replacements may insert [CLS]). This is how such a bug shows
    up in practice: the labels teach the model that [CLS] is a likely token.
Evaluation positions: the validation split masked by the standard collator (fixed seed; [CLS]
never selected), and separately every block's position 0 replaced by [MASK].
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mlm.checkpoint import load_pretrained  # noqa: E402
from mlm.collate import MLMCollator  # noqa: E402
from mlm.config import ModelConfig  # noqa: E402
from mlm.model import MLMModel  # noqa: E402
from mlm.tokenizer import CLS, MASK  # noqa: E402

NAME = "special_token_bug"


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--bug-steps", type=int, default=None, help="steps of buggy training (default 150; tiny 3)")
    p.add_argument("--bug-lr", type=float, default=1e-3)
    p.add_argument("--blocks", type=int, default=None, help="validation blocks analysed (default all; tiny 16)")
    return p.parse_args(argv)


def buggy_copy(model: MLMModel, cls_id: int) -> MLMModel:
    """The same weights in a model whose head does not mask [CLS] (the bug, as a model config)."""
    cfg = ModelConfig(**{**vars(model.cfg), "special_token_ids": [i for i in model.cfg.special_token_ids
                                                                  if i != cls_id]})
    bug = MLMModel(cfg).to(next(model.parameters()).device)
    bug.load_state_dict(model.state_dict())
    return bug


@torch.no_grad()
def analyse(model: MLMModel, ids: torch.Tensor, labels: torch.Tensor, cls_id: int) -> dict:
    """Correct vs buggy distributions at the labelled positions of one batch."""
    model.eval()
    special = model.head.special.clone()  # (V,) the library's excluded ids
    out = model(ids, labels=labels)  # library path: sparse logits, specials -inf
    p_lib = out.logits.double().softmax(-1)
    hidden = model._encode(ids, model._layout(ids, None))  # (b, s, h), final norm applied
    rows = (labels != -100)
    h = hidden[rows]  # (m, h), same row-major order as the library's sparse logits
    head = model.head
    x = head.norm(F.gelu(head.dense(h)))
    raw = F.linear(x, model.embeddings.word.weight, head.bias).double()  # pre-mask logits (m, V)
    keep_cls = special.clone()
    keep_cls[cls_id] = False
    logp = raw.masked_fill(special, float("-inf")).log_softmax(-1)  # correct
    logq = raw.masked_fill(keep_cls, float("-inf")).log_softmax(-1)  # buggy: [CLS] let through
    p, q = logp.exp(), logq.exp()
    kl_pq = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)  # finite
    kl_qp = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)  # +inf where q(CLS) > 0
    q_cls = q[:, cls_id]
    analytic = -torch.log1p(-q_cls)
    target = out.target
    positions = rows.nonzero()[:, 1]
    return {
        "p_cls_library": p_lib[:, cls_id], "p_special_library_max": float(p_lib[:, special].max()),
        "library_vs_recomputed_max_abs_diff": float((p_lib - p).abs().max()),
        "q_cls": q_cls, "log_q_cls": logq[:, cls_id], "kl_pq": kl_pq, "kl_pq_analytic": analytic, "kl_qp": kl_qp,
        "hijacked": q.argmax(-1) == cls_id, "correct_right": p.argmax(-1) == target,
        "buggy_right": q.argmax(-1) == target, "position": positions,
    }


def summarise(parts: list[dict], seq_len: int) -> dict:
    cat = {k: torch.cat([d[k].reshape(-1) for d in parts]) if torch.is_tensor(parts[0][k]) else None
           for k in parts[0]}
    n = int(cat["q_cls"].numel())
    hij = cat["hijacked"]
    by_pos = np.bincount(cat["position"][hij].cpu().numpy(), minlength=seq_len).tolist()
    finite_kl = torch.isfinite(cat["kl_qp"])
    return {
        "positions": n,
        "p_cls_correct_max": float(cat["p_cls_library"].max()),
        "p_cls_correct_all_exactly_zero": bool((cat["p_cls_library"] == 0).all()),
        "p_any_special_correct_max": max(d["p_special_library_max"] for d in parts),
        "library_vs_recomputed_max_abs_diff": max(d["library_vs_recomputed_max_abs_diff"] for d in parts),
        "q_cls_mean": float(cat["q_cls"].mean()), "q_cls_median": float(cat["q_cls"].median()),
        "q_cls_max": float(cat["q_cls"].max()), "log_q_cls_min": float(cat["log_q_cls"].min()),
        "kl_correct_buggy_mean": float(cat["kl_pq"].mean()), "kl_correct_buggy_max": float(cat["kl_pq"].max()),
        "kl_correct_buggy_all_finite": bool(torch.isfinite(cat["kl_pq"]).all()),
        "kl_matches_minus_log1m_qcls_max_abs_diff": float((cat["kl_pq"] - cat["kl_pq_analytic"]).abs().max()),
        "kl_buggy_correct_mean": float(cat["kl_qp"].mean()),  # inf as soon as one position is infinite
        "kl_buggy_correct_infinite_positions": int((~finite_kl).sum()),
        "hijacked_positions": int(hij.sum()), "hijacked_fraction": float(hij.float().mean()),
        "accuracy_correct_mask": float(cat["correct_right"].float().mean()),
        "accuracy_buggy_mask": float(cat["buggy_right"].float().mean()),
        "hijacked_by_position": by_pos,
        "log10_q_cls_hist": np.histogram(cat["log_q_cls"].cpu().numpy() / np.log(10), bins=40)[0].tolist(),
        "log10_q_cls_hist_edges": np.histogram(cat["log_q_cls"].cpu().numpy() / np.log(10), bins=40)[1].tolist(),
    }


def evaluate_bug(model, blocks: np.ndarray, collator: MLMCollator, cls_id: int, mask_id: int, seed: int,
                 device, batch_size: int = 64) -> dict:
    text, first = [], []
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        batch = collator(list(chunk), generator=np.random.default_rng([seed, start]))
        text.append(analyse(model, batch["input_ids"].to(device), batch["labels"].to(device), cls_id))
        ids = torch.as_tensor(chunk, device=device).clone()
        labels = torch.full_like(ids, -100)
        labels[:, 0] = ids[:, 0]  # the [CLS] that was there
        ids[:, 0] = mask_id
        first.append(analyse(model, ids, labels, cls_id))
    seq = blocks.shape[1]
    return {"text_positions": summarise(text, seq), "position_0_masked": summarise(first, seq)}


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    bug_steps = args.bug_steps or (3 if args.tiny else 150)
    cfg, rt = common.start(args)
    data = common.load_data(cfg)
    timings: dict[str, float] = {}
    ckpt = common.shared_checkpoint(cfg, args.work_dir, timings)
    model, tok = load_pretrained(ckpt, rt.device)
    cls_id, mask_id = tok.token_to_id(CLS), tok.token_to_id(MASK)
    n_blocks = args.blocks or (16 if args.tiny else len(data.validation))
    blocks = np.asarray(data.validation[np.arange(min(n_blocks, len(data.validation)))], dtype=np.int64)
    assert (blocks[:, 0] == cls_id).all(), "blocks are expected to start with [CLS]"
    collator = MLMCollator.from_tokenizer(tok, mlm_probability=cfg.collate.mlm_probability)

    t0 = time.monotonic()
    common.log(f"analysing the correctly trained checkpoint on {len(blocks)} validation blocks")
    correct_run = evaluate_bug(model, blocks, collator, cls_id, mask_id, cfg.eval.seed, rt.device)
    timings["analysis_checkpoint"] = time.monotonic() - t0

    # Buggy training: [CLS] is an ordinary token for both the collator and the head.
    t0 = time.monotonic()
    bug_model = buggy_copy(model, cls_id)
    bug_collator = MLMCollator(vocab_size=tok.get_vocab_size(), mask_token_id=mask_id,
                               pad_token_id=collator.pad_token_id,
                               special_token_ids=[i for i in collator.special_token_ids if i != cls_id],
                               mlm_probability=cfg.collate.mlm_probability)
    bug_cfg = common.clone_config(cfg, **{"train.lr": args.bug_lr, "train.warmup_steps": max(1, bug_steps // 10),
                                          "train.schedule": "constant"})

    def batch_fn(step):
        b = common.step_blocks(data.train, cfg.train.batch_size, args.seed + 17, step)
        return bug_collator(list(b), generator=np.random.default_rng([args.seed, 17, step]))

    cls_label_steps = []

    def hook(step, result, batch):
        n_cls = int((batch["labels"] == cls_id).sum())
        cls_label_steps.append(n_cls)
        return {"cls_labels": n_cls}

    common.log(f"buggy training: {bug_steps} steps from the checkpoint with [CLS] unmasked and labelled")
    history = common.run_training(bug_model, bug_cfg, rt, batch_fn, bug_steps, step_hook=hook, label="buggy")
    timings["buggy_training"] = time.monotonic() - t0
    t0 = time.monotonic()
    # Analyse the buggy-trained weights in the library's (correct) model and with the bug.
    fixed = MLMModel(model.cfg).to(rt.device)
    fixed.load_state_dict(bug_model.state_dict())
    buggy_run = evaluate_bug(fixed, blocks, collator, cls_id, mask_id, cfg.eval.seed, rt.device)
    timings["analysis_buggy"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start

    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt),
        "what_was_done": ("Correct p: the library's head (all special ids -inf before the softmax). Buggy q: the "
                          "same weights, pre-mask logits with every special id but [CLS] set to -inf. Measured on "
                          "the shared checkpoint as trained, and after buggy training (the head built without [CLS] "
                          "among its special ids, the collator masking/labelling [CLS] like any token, so position 0 "
                          "is labelled [CLS] at the mask rate)."),
        "cls_id": cls_id, "checkpoint": str(ckpt), "validation_blocks": len(blocks),
        "checkpoint_as_trained": correct_run,
        "after_buggy_training": {"steps": bug_steps, "lr": args.bug_lr,
                                 "cls_labels_per_step_mean": float(np.mean(cls_label_steps)),
                                 "final_train_loss": history[-1]["loss"], **buggy_run},
        "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def draw(plt, r):
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    for key, label, c in (("checkpoint_as_trained", "checkpoint as trained", "C0"),
                          ("after_buggy_training", "after buggy training", "C3")):
        s = r[key]["text_positions"]
        e = np.asarray(s["log10_q_cls_hist_edges"])
        ax[0].stairs(s["log10_q_cls_hist"], e, label=f"{label} (hijacked {s['hijacked_positions']}/{s['positions']})",
                     color=c, fill=False)
        s0 = r[key]["position_0_masked"]
        e0 = np.asarray(s0["log10_q_cls_hist_edges"])
        ax[1].stairs(s0["log10_q_cls_hist"], e0,
                     label=f"{label} (hijacked {s0['hijacked_positions']}/{s0['positions']})", color=c, fill=False)
    ax[0].set(title="buggy q([CLS]) at masked text positions\n(correct p([CLS]) = 0 exactly)",
              xlabel="log10 q([CLS])", ylabel="positions")
    ax[1].set(title="buggy q([CLS]) at position 0 replaced by [MASK]", xlabel="log10 q([CLS])")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    names, vals = [], []
    for key, label in (("checkpoint_as_trained", "as trained"), ("after_buggy_training", "buggy-trained")):
        for where, wl in (("text_positions", "text"), ("position_0_masked", "pos 0")):
            names.append(f"{label}\n{wl}")
            vals.append(r[key][where]["kl_correct_buggy_mean"])
    ax[2].bar(names, vals, color=["C0", "C0", "C3", "C3"])
    ax[2].set(title="mean KL(p_correct || q_buggy) (finite);\nKL(q_buggy || p_correct) = ∞ at every position",
              ylabel="nats", yscale="log")
    ax[2].tick_params(axis="x", labelsize=8)
    return fig


if __name__ == "__main__":
    sys.exit(main())
