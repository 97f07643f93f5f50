"""Surprisal-weighted masking vs uniform masking at the same ratio.

    python scripts/experiments/surprisal_masking.py [--config run.yaml] [--out docs/experiments] [--tiny]

Surprisal of token i = -log p(x_i | the block with x_i's group replaced by [MASK]), under the
current model (no gradient): the positions are split at random into G groups and each group is
masked in turn (G forward passes), so every token gets a masked-context estimate. The weighted
arm masks with `MLMCollator(strategy="weighted")`, p_i = min(1, c * surprisal_i^power), c set so
the expected ratio stays alpha; the uniform arm is the standard token masking.

(i)  Learning signal at a fixed checkpoint (the shared pretrained model): over the same batches,
     the mean masked loss and the norm of the minibatch gradient under each masking.
(ii) Training from scratch, both arms on the same blocks and the same mask seeds for the same
     number of steps: train loss (on each arm's own masked tokens), gradient norm, and the
     validation loss under *uniform* 15% masking with a fixed seed (the common yardstick).
     `--refresh N` scores surprisal with a snapshot refreshed every N steps (a previous model)
     instead of the current weights.
"""
from __future__ import annotations

import copy
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
from mlm.model import MLMModel  # noqa: E402
from mlm.tokenizer import MASK  # noqa: E402
from mlm.loop import evaluate  # noqa: E402
from mlm.tokenizer import model_config_for  # noqa: E402

NAME = "surprisal_masking"


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (default 200; tiny 4)")
    p.add_argument("--groups", type=int, default=4, help="masked passes used to score surprisal")
    p.add_argument("--power", type=float, default=1.0, help="weights = surprisal ** power")
    p.add_argument("--refresh", type=int, default=0,
                   help="score with a snapshot refreshed every N steps (0: the current model)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation evals (default 25)")
    p.add_argument("--signal-batches", type=int, default=None, help="batches for part (i) (default 8; tiny 2)")
    return p.parse_args(argv)


@torch.no_grad()
def surprisal(model: MLMModel, blocks: np.ndarray, special: np.ndarray, mask_id: int, groups: int,
              rng: np.random.Generator, device) -> np.ndarray:
    """(B, S) surprisal in nats of each token with its group masked; 0 at special tokens."""
    was = model.training
    model.eval()
    ids = torch.as_tensor(blocks, device=device)
    eligible = torch.as_tensor(~special[blocks], device=device)
    group = torch.as_tensor(rng.integers(0, groups, size=blocks.shape), device=device)
    out = torch.zeros(blocks.shape, dtype=torch.float32, device=device)
    for g in range(groups):
        sel = eligible & (group == g)
        if not bool(sel.any()):
            continue
        labels = torch.where(sel, ids, torch.full_like(ids, -100))
        res = model(ids.masked_fill(sel, mask_id), labels=labels)
        nll = F.cross_entropy(res.logits, res.target, reduction="none")  # (m,), row-major order of sel
        out[sel] = nll.float()
    model.train(was)
    return out.cpu().numpy()


def weighted_batch(collator: MLMCollator, blocks: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> dict:
    return collator([{"input_ids": b, "weights": w} for b, w in zip(blocks, weights)], generator=rng)


def learning_signal(model, tok, data, cfg, args, special, mask_id, n_batches: int, device) -> dict:
    """Mean masked loss and gradient norm of uniform vs surprisal-weighted masks, same blocks."""
    uniform = MLMCollator.from_tokenizer(tok, mlm_probability=cfg.collate.mlm_probability)
    weighted = MLMCollator.from_tokenizer(tok, mlm_probability=cfg.collate.mlm_probability, strategy="weighted")
    rows = {"uniform": [], "surprisal": []}
    masked_surprisal = {"uniform": [], "surprisal": []}
    model.train()
    for b in range(n_batches):
        blocks = common.step_blocks(data.train, cfg.train.batch_size, args.seed + 1, b)
        s = surprisal(model, blocks, special, mask_id, args.groups, np.random.default_rng([args.seed, 7, b]), device)
        for arm in rows:
            rng = np.random.default_rng([args.seed, 11, b])
            batch = (uniform(list(blocks), generator=rng) if arm == "uniform"
                     else weighted_batch(weighted, blocks, s ** args.power, rng))
            model.zero_grad(set_to_none=True)
            out = model(batch["input_ids"].to(device), labels=batch["labels"].to(device), reduction="mean")
            out.loss.backward()
            gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
            rows[arm].append({"loss": float(out.loss.detach()), "grad_norm": float(gn),
                              "masked": int((batch["labels"] != -100).sum())})
            masked_surprisal[arm].append(float(s[batch["labels"].numpy() != -100].mean()))
    model.zero_grad(set_to_none=True)
    summary = {}
    for arm, rs in rows.items():
        summary[arm] = {"masked_loss_mean": float(np.mean([r["loss"] for r in rs])),
                        "grad_norm_mean": float(np.mean([r["grad_norm"] for r in rs])),
                        "masked_tokens_mean": float(np.mean([r["masked"] for r in rs])),
                        "surprisal_of_masked_tokens": float(np.mean(masked_surprisal[arm])),
                        "per_batch": rs}
    summary["grad_norm_ratio_surprisal_over_uniform"] = (summary["surprisal"]["grad_norm_mean"]
                                                         / summary["uniform"]["grad_norm_mean"])
    summary["masked_loss_ratio_surprisal_over_uniform"] = (summary["surprisal"]["masked_loss_mean"]
                                                           / summary["uniform"]["masked_loss_mean"])
    return summary


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    steps = args.steps or (4 if args.tiny else 200)
    eval_every = args.eval_every or (2 if args.tiny else 25)
    n_signal = args.signal_batches or (2 if args.tiny else 8)
    cfg, rt = common.start(args)
    data = common.load_data(cfg)
    tok = data.tokenizer
    alpha = cfg.collate.mlm_probability
    uniform = MLMCollator.from_tokenizer(tok, mlm_probability=alpha)
    weighted = MLMCollator.from_tokenizer(tok, mlm_probability=alpha, strategy="weighted")
    special = common.special_mask(tok)
    mask_id = tok.token_to_id(MASK)
    timings = {}

    # ---- (i) learning signal at the shared checkpoint
    ckpt = common.shared_checkpoint(cfg, args.work_dir, timings)
    t0 = time.monotonic()
    model, _ = load_pretrained(ckpt, rt.device)
    common.log(f"(i) learning signal at {ckpt}: {n_signal} batches")
    signal = learning_signal(model, tok, data, cfg, args, special, mask_id, n_signal, rt.device)
    common.log(f"    masked loss uniform {signal['uniform']['masked_loss_mean']:.3f} vs surprisal "
               f"{signal['surprisal']['masked_loss_mean']:.3f}; grad norm {signal['uniform']['grad_norm_mean']:.3f} vs "
               f"{signal['surprisal']['grad_norm_mean']:.3f}")
    del model
    timings["signal"] = time.monotonic() - t0

    # ---- (ii) training from scratch, both arms
    eval_col = MLMCollator.from_tokenizer(tok, mlm_probability=0.15)

    def eval_fn(model):
        def run(step):
            e = evaluate(model, data.validation, eval_col, rt, cfg.eval.batch_size, cfg.eval.batches, cfg.eval.seed)
            return {"eval_loss": e["eval_loss"], "eval_accuracy": e["eval_accuracy"]}
        return run

    histories = {}
    t0 = time.monotonic()
    for arm in ("uniform", "surprisal"):
        torch.manual_seed(args.seed)  # the same initial weights for both arms
        model = MLMModel(model_config_for(cfg.model, tok)).to(rt.device)
        scorer = {"model": model, "since": 0}
        stats: dict = {}

        def batch_fn(step, arm=arm, model=model, scorer=scorer, stats=stats):
            blocks = common.step_blocks(data.train, cfg.train.batch_size, args.seed, step)
            rng = np.random.default_rng([args.seed, step])  # same mask seed in both arms
            if arm == "uniform":
                return uniform(list(blocks), generator=rng)
            if args.refresh and (scorer["model"] is model or step - scorer["since"] >= args.refresh):
                scorer["model"], scorer["since"] = copy.deepcopy(model), step
            s = surprisal(scorer["model"], blocks, special, mask_id, args.groups,
                          np.random.default_rng([args.seed, 99, step]), rt.device)
            batch = weighted_batch(weighted, blocks, s ** args.power, rng)
            chosen = batch["labels"].numpy() != -100
            stats["mean_surprisal_all"] = float(s[~special[blocks]].mean())
            stats["mean_surprisal_masked"] = float(s[chosen].mean())
            return batch

        def hook(step, result, batch, stats=stats):
            return dict(stats)

        common.log(f"(ii) training the {arm} arm for {steps} steps")
        ta = time.monotonic()
        histories[arm] = common.run_training(model, cfg, rt, batch_fn, steps, eval_fn(model), eval_every,
                                             step_hook=hook, label=arm)
        timings[f"train_{arm}"] = time.monotonic() - ta
        del model, scorer
    timings["total"] = time.monotonic() - t_start

    def final_eval(h):
        return [r for r in h if "eval_loss" in r][-1]

    def mean_over(h, key, last_frac=1.0):
        vals = [r[key] for r in h[int(len(h) * (1 - last_frac)):] if key in r]
        return float(np.mean(vals)) if vals else None

    summary = {arm: {"final_eval_loss_uniform15": final_eval(h)["eval_loss"],
                     "final_eval_accuracy_uniform15": final_eval(h)["eval_accuracy"],
                     "mean_train_loss": mean_over(h, "loss"), "mean_grad_norm": mean_over(h, "grad_norm"),
                     "mean_train_loss_last_quarter": mean_over(h, "loss", 0.25),
                     "mean_grad_norm_last_quarter": mean_over(h, "grad_norm", 0.25)}
               for arm, h in histories.items()}
    s_h = histories["surprisal"]
    summary["surprisal"]["mean_surprisal_of_masked_tokens"] = mean_over(s_h, "mean_surprisal_masked")
    summary["surprisal"]["mean_surprisal_of_all_tokens"] = mean_over(s_h, "mean_surprisal_all")
    summary["final_eval_loss_difference_surprisal_minus_uniform"] = (
        summary["surprisal"]["final_eval_loss_uniform15"] - summary["uniform"]["final_eval_loss_uniform15"])
    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt),
        "settings": {"steps": steps, "groups": args.groups, "power": args.power, "refresh": args.refresh,
                     "scorer": "current model" if not args.refresh else f"snapshot every {args.refresh} steps",
                     "eval": "validation, uniform 15% masking, fixed seed"},
        "learning_signal_at_checkpoint": {"checkpoint": str(ckpt), **signal},
        "training": {"summary": summary, "history": {arm: h for arm, h in histories.items()}},
        "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def _smooth(x, k=10):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def draw(plt, r):
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2))
    sig = r["learning_signal_at_checkpoint"]
    arms = ["uniform", "surprisal"]
    ax[0].bar(arms, [sig[a]["masked_loss_mean"] for a in arms], color=["C0", "C1"])
    ax[0].set(title="(i) masked loss at the pretrained checkpoint", ylabel="mean masked cross-entropy")
    ax0b = ax[0].twinx()
    ax0b.plot(arms, [sig[a]["grad_norm_mean"] for a in arms], "kD-", label="grad norm")
    ax0b.set_ylabel("gradient norm (black)")
    hist = r["training"]["history"]
    for i, a in enumerate(arms):
        h = hist[a]
        k = min(10, max(1, len(h) // 5))
        ax[1].plot(np.arange(len(_smooth([x["loss"] for x in h], k))) + k, _smooth([x["loss"] for x in h], k),
                   color=f"C{i}", label=a)
        ax[2].plot(np.arange(len(_smooth([x["grad_norm"] for x in h], k))) + k,
                   _smooth([x["grad_norm"] for x in h], k), color=f"C{i}", label=a)
        ev = [x for x in h if "eval_loss" in x]
        ax[3].plot([x["step"] for x in ev], [x["eval_loss"] for x in ev], "o-", color=f"C{i}", label=a)
    ax[1].set(title="(ii) train loss on own masked tokens", xlabel="step")
    ax[2].set(title="(ii) gradient norm (pre-clip)", xlabel="step")
    ax[3].set(title="(ii) validation loss, uniform 15% masking", xlabel="step")
    for a in ax[1:]:
        a.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    sys.exit(main())
