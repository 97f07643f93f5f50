"""Dependence between masked positions: joint (sequential) vs independent prediction, by distance.

    python scripts/experiments/mask_dependence.py [--config run.yaml] [--out docs/experiments] [--tiny]

MLM predicts all masked tokens independently given the unmasked context: with positions i and
j both masked, p(x_i, x_j | c) is modelled as p(x_i | c) p(x_j | c). For pairs (i, j = i + d) in
validation blocks (both ordinary tokens, everything else unmasked), with the shared pretrained
checkpoint:

  independent   mask both, predict j                      log p(x_j | c)
  joint/oracle  mask both, fill i with the true x_i, re-predict j   log p(x_j | c, x_i)
  joint/greedy  mask both, fill i with the model's own argmax at i, re-predict j

and the same with i and j swapped (both orders are averaged). The gap
log p(x_j | c, x_i) - log p(x_j | c) is what the independence assumption leaves out (its mean is
the pointwise conditional dependence the model has learned between the two positions); the
script reports it, the accuracy at j under each scheme, how often the argmax at j changes, and
the KL between j's two predictive distributions, as a function of d.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlm.checkpoint import load_pretrained  # noqa: E402
from mlm.tokenizer import MASK  # noqa: E402

NAME = "mask_dependence"


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--distances", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated (default 1,2,3,4,6,8,16,32,48; capped below the block length)")
    p.add_argument("--pairs", type=int, default=None, help="pairs per distance (default 1024; tiny 32)")
    return p.parse_args(argv)


def sample_pairs(blocks: np.ndarray, special: np.ndarray, d: int, n: int, rng) -> np.ndarray:
    """(n, 3) rows (block, i, j=i+d) with both positions ordinary tokens."""
    ok = ~special[blocks]  # (B, S)
    valid = ok[:, :-d] & ok[:, d:]  # (B, S-d): i and i+d both ordinary
    bi, ii = np.nonzero(valid)
    pick = rng.choice(len(bi), size=min(n, len(bi)), replace=False)
    return np.stack([bi[pick], ii[pick], ii[pick] + d], 1)


@torch.no_grad()
def logprobs_at(model, ids: torch.Tensor, pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, V) log-probabilities at one position per row (the model's sparse head)."""
    labels = torch.full_like(ids, -100)
    labels[torch.arange(len(ids), device=ids.device), pos] = target
    return model(ids, labels=labels).logits.log_softmax(-1)  # rows in order: one labelled position each


@torch.no_grad()
def measure(model, blocks: np.ndarray, pairs: np.ndarray, mask_id: int, device, batch: int = 128) -> dict:
    acc = {k: [] for k in ("gap_oracle", "gap_greedy", "right_indep", "right_oracle", "right_greedy",
                           "changed_oracle", "changed_greedy", "kl_oracle", "greedy_fill_right",
                           "logp_indep", "logp_oracle")}
    for s in range(0, len(pairs), batch):
        chunk = pairs[s:s + batch]
        ids = torch.as_tensor(blocks[chunk[:, 0]], device=device)
        n = len(chunk)
        ar = torch.arange(n, device=device)
        for a_col, b_col in ((1, 2), (2, 1)):  # fill a, re-predict b; then the other order
            pa = torch.as_tensor(chunk[:, a_col], device=device)
            pb = torch.as_tensor(chunk[:, b_col], device=device)
            xa, xb = ids[ar, pa], ids[ar, pb]
            both = ids.clone()
            both[ar, pa] = mask_id
            both[ar, pb] = mask_id
            lp_b = logprobs_at(model, both, pb, xb)  # independent prediction of b
            lp_a = logprobs_at(model, both, pa, xa)
            greedy_a = lp_a.argmax(-1)
            oracle = both.clone()
            oracle[ar, pa] = xa
            lp_b_oracle = logprobs_at(model, oracle, pb, xb)
            greedy = both.clone()
            greedy[ar, pa] = greedy_a
            lp_b_greedy = logprobs_at(model, greedy, pb, xb)
            t_indep, t_oracle = lp_b[ar, xb], lp_b_oracle[ar, xb]
            acc["logp_indep"] += t_indep.tolist()
            acc["logp_oracle"] += t_oracle.tolist()
            acc["gap_oracle"] += (t_oracle - t_indep).tolist()
            acc["gap_greedy"] += (lp_b_greedy[ar, xb] - t_indep).tolist()
            acc["right_indep"] += (lp_b.argmax(-1) == xb).tolist()
            acc["right_oracle"] += (lp_b_oracle.argmax(-1) == xb).tolist()
            acc["right_greedy"] += (lp_b_greedy.argmax(-1) == xb).tolist()
            acc["changed_oracle"] += (lp_b_oracle.argmax(-1) != lp_b.argmax(-1)).tolist()
            acc["changed_greedy"] += (lp_b_greedy.argmax(-1) != lp_b.argmax(-1)).tolist()
            acc["greedy_fill_right"] += (greedy_a == xa).tolist()
            p_or = lp_b_oracle.exp()
            kl = torch.where(p_or > 0, p_or * (lp_b_oracle - lp_b), torch.zeros_like(p_or)).sum(-1)
            acc["kl_oracle"] += kl.tolist()
    out = {}
    for k, v in acc.items():
        v = np.asarray(v, dtype=float)
        out[k] = float(v.mean())
        if k in ("gap_oracle", "gap_greedy", "kl_oracle"):
            out[k + "_stderr"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
            out[k + "_median"] = float(np.median(v))
    out["predictions"] = len(acc["gap_oracle"])
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    cfg, rt = common.start(args)
    data = common.load_data(cfg)
    timings: dict[str, float] = {}
    ckpt = common.shared_checkpoint(cfg, args.work_dir, timings)
    t0 = time.monotonic()
    model, tok = load_pretrained(ckpt, rt.device)
    mask_id = tok.token_to_id(MASK)
    special = common.special_mask(tok)
    blocks = np.asarray(data.validation[np.arange(len(data.validation))], dtype=np.int64)
    seq = blocks.shape[1]
    distances = args.distances or [1, 2, 3, 4, 6, 8, 16, 32, 48]
    distances = [d for d in distances if 1 <= d < seq - 1]
    n_pairs = args.pairs or (32 if args.tiny else 1024)
    rng = np.random.default_rng(args.seed)
    rows = []
    for d in distances:
        pairs = sample_pairs(blocks, special, d, n_pairs, rng)
        m = measure(model, blocks, pairs, mask_id, rt.device)
        rows.append({"distance": d, "pairs": len(pairs), **m})
        common.log(f"d={d:2d}: gap(oracle) {m['gap_oracle']:+.3f} nats, gap(greedy) {m['gap_greedy']:+.3f}, "
                   f"acc indep {m['right_indep']:.3f} -> oracle {m['right_oracle']:.3f} / greedy {m['right_greedy']:.3f}")
    timings["measure"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start
    near = rows[0]
    far = rows[-1]
    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt), "checkpoint": str(ckpt),
        "pretrain_final_metrics": common.pretrain_metrics(ckpt),
        "validation_blocks": len(blocks),
        "headline": {"adjacent_gap_oracle_nats": near["gap_oracle"], "farthest_distance": far["distance"],
                     "farthest_gap_oracle_nats": far["gap_oracle"],
                     "adjacent_over_farthest": near["gap_oracle"] / far["gap_oracle"] if far["gap_oracle"] else None},
        "by_distance": rows, "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def draw(plt, r):
    rows = r["by_distance"]
    d = [x["distance"] for x in rows]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    ax[0].errorbar(d, [x["gap_oracle"] for x in rows], yerr=[x["gap_oracle_stderr"] for x in rows], marker="o",
                   label="fill with the true token")
    ax[0].errorbar(d, [x["gap_greedy"] for x in rows], yerr=[x["gap_greedy_stderr"] for x in rows], marker="s",
                   label="fill with the model's argmax")
    ax[0].axhline(0, color="gray", lw=0.8)
    ax[0].set(title="joint minus independent: mean Δ log p(x_j)", xlabel="distance |i - j| (tokens)",
              ylabel="nats", xscale="log")
    ax[0].legend(fontsize=8)
    ax[1].plot(d, [x["right_indep"] for x in rows], "o-", label="independent (both masked)")
    ax[1].plot(d, [x["right_oracle"] for x in rows], "o-", label="joint, true fill")
    ax[1].plot(d, [x["right_greedy"] for x in rows], "o-", label="joint, greedy fill")
    ax[1].set(title="accuracy at the re-predicted position", xlabel="distance", ylabel="accuracy", xscale="log")
    ax[1].legend(fontsize=8)
    ax[2].plot(d, [x["kl_oracle"] for x in rows], "o-", label="KL(p(·|c,x_i) || p(·|c))")
    ax[2].plot(d, [x["changed_oracle"] for x in rows], "s-", label="argmax changed (true fill)")
    ax[2].set(title="effect of revealing x_i on the prediction at j", xlabel="distance", xscale="log")
    ax[2].legend(fontsize=8)
    for a in ax:
        a.set_xticks(d, [str(v) for v in d])
    return fig


if __name__ == "__main__":
    sys.exit(main())
