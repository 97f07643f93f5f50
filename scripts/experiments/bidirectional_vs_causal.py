"""Bidirectional (MLM) vs causal (next-token) training of the same Transformer, on cloze items
whose answer is given away by the right-hand context.

    python scripts/experiments/bidirectional_vs_causal.py [--config run.yaml] [--out docs/experiments] [--tiny]

The MLM model is the shared pretrained checkpoint (`mlm.train.train(cfg)`, reused from the
work dir like every experiment here). The causal model is the same `MLMModel` config trained here
for the same number of steps, from the same initial weights (same seed), on exactly the same
blocks in the same order (`common.step_blocks` reproduces the trainer's batches), with the same
optimizer and learning-rate schedule (`build_optimizer`, `lr_at`, `train_step`). It differs only
in its attention and labels: `CausalLM` overrides the model's token layout so the attention
kernel gets a lower-triangular mask (the library has no causal option; no library file is
changed), and its labels are the next token at every position. Encoder compute is equal; the
causal head runs on ~100% of positions against ~15% for MLM, so the causal model also gets
~6.7x more supervised predictions per step.

Cloze items, from the validation split, 4-way multiple choice (the answer + 3 distractors):
  * doc_start: the first token of a document (right after [SEP]); what precedes it is the
    previous, unrelated document, so the evidence is on the right. Distractors are drawn from the
    training split's distribution of document-initial tokens.
  * repeated_right: a token that does not occur earlier in the block but occurs again within the
    next `--window` tokens (the right context contains the answer). Distractors: unigram draws.
Scorers: MLM = the masked position's logits over the 4 candidates; causal (left only) = the
next-token logits from the prefix; causal (full) = each candidate substituted and the whole
rest of the block scored, sum of log-probs (the fair way for a left-to-right model to use the
right context, at 4 forward passes per item); frequency = the candidate most frequent in training.
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
from mlm.collate import MLMCollator  # noqa: E402
from mlm.model import MLMModel, TokenLayout  # noqa: E402
from mlm.tokenizer import MASK, SEP  # noqa: E402
from mlm.loop import evaluate  # noqa: E402
from mlm.tokenizer import model_config_for  # noqa: E402

NAME = "bidirectional_vs_causal"


class CausalLM(MLMModel):
    """MLMModel with a causal attention mask: token t attends to tokens 0..t only.

    The only change is the layout handed to every attention call: a (1, 1, s, s) lower-triangular
    boolean mask in place of "no mask". Padding is not supported (blocks are never padded).
    """

    def _layout(self, input_ids, attention_mask):
        if attention_mask is not None and not bool((attention_mask != 0).all()):
            raise ValueError("CausalLM does not support padding")
        b, s = input_ids.shape
        causal = torch.ones(s, s, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        return TokenLayout(b, s, None, causal)

    def _encode(self, input_ids, layout, keep=None):
        # Every position through every layer, then the kept rows: the causal mask differs per
        # query, and MLMModel's last-layer shortcut for labelled rows packs queries and masks keys only.
        x = super()._encode(input_ids, layout)  # (b, s, h)
        return x if keep is None else x.reshape(-1, x.shape[-1])[keep]


def next_token_labels(ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """labels[:, t] = ids[:, t + 1]; -100 at the last position and where the next token is special
    (the head gives special ids probability 0, as in MLM)."""
    labels = torch.full_like(ids, -100)
    nxt = ids[:, 1:]
    labels[:, :-1] = torch.where(special[nxt], torch.full_like(nxt, -100), nxt)
    return labels


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--window", type=int, default=16, help="right-context window of repeated_right items")
    return p.parse_args(argv)


def build_items(data, special: np.ndarray, sep_id: int, window: int, seed: int, max_items: int) -> dict:
    train_tokens = np.asarray(data.train[np.arange(len(data.train))], dtype=np.int64)
    flat = train_tokens.reshape(-1)
    vocab = special.shape[0]
    unigram = np.bincount(flat[~special[flat]], minlength=vocab).astype(float)
    starts = flat[1:][(flat[:-1] == sep_id) & ~special[flat[1:]]]
    doc_initial = np.bincount(starts, minlength=vocab).astype(float)
    rng = np.random.default_rng(seed)
    val = np.asarray(data.validation[np.arange(len(data.validation))], dtype=np.int64)
    items = {"doc_start": [], "repeated_right": []}
    for bi, block in enumerate(val):
        s = len(block)
        for t in range(2, s - 2):
            tokn = block[t]
            if special[tokn]:
                continue
            if block[t - 1] == sep_id:
                items["doc_start"].append((bi, t, tokn))
            elif tokn not in block[:t] and tokn in block[t + 1:t + 1 + window] and unigram[tokn] > 0:
                items["repeated_right"].append((bi, t, tokn))
    out = {}
    for kind, dist in (("doc_start", doc_initial), ("repeated_right", unigram)):
        chosen = items[kind]
        if len(chosen) > max_items:
            chosen = [chosen[i] for i in np.sort(rng.choice(len(chosen), max_items, replace=False))]
        rows = []
        for bi, t, answer in chosen:
            p = dist.copy()
            p[answer] = 0.0
            distract = rng.choice(vocab, 3, replace=False, p=p / p.sum())
            cands = np.concatenate([[answer], distract])
            rng.shuffle(cands)
            rows.append({"block": bi, "t": t, "answer": int(answer), "candidates": cands.tolist()})
        out[kind] = rows
    return {"items": out, "validation": val,
            "frequency_of": {"doc_start": doc_initial, "repeated_right": unigram}}


@torch.no_grad()
def score_items(mlm: MLMModel, causal: CausalLM, val: np.ndarray, rows: list[dict], mask_id: int,
                special: torch.Tensor, freq: np.ndarray, device, batch: int = 64) -> dict:
    mlm.eval()
    causal.eval()
    right = {"mlm": [], "causal_left": [], "causal_full": [], "frequency": []}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        ids = torch.as_tensor(np.stack([val[r["block"]] for r in chunk]), device=device)
        t = torch.tensor([r["t"] for r in chunk], device=device)
        cands = torch.tensor([r["candidates"] for r in chunk], device=device)  # (n, 4)
        answer = torch.tensor([r["answer"] for r in chunk], device=device)
        n = len(chunk)
        ar = torch.arange(n, device=device)
        masked = ids.clone()
        masked[ar, t] = mask_id
        logits = mlm(masked).logits[ar, t]  # (n, V)
        right["mlm"] += (cands[ar, logits.gather(1, cands).argmax(1)] == answer).tolist()
        logits = causal(ids).logits[ar, t - 1]
        right["causal_left"] += (cands[ar, logits.gather(1, cands).argmax(1)] == answer).tolist()
        # full-sequence score for each candidate: sum of log p over positions t..end
        total = torch.zeros(n, 4, device=device)
        for c in range(4):
            x = ids.clone()
            x[ar, t] = cands[:, c]
            logp = causal(x).logits.log_softmax(-1)  # (n, s, V)
            labels = next_token_labels(x, special)  # predicts x[:, j+1] at j
            s = x.shape[1]
            j = torch.arange(s, device=device)[None, :]
            use = (j >= (t - 1)[:, None]) & (labels != -100)
            lp = logp.gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total[:, c] = torch.where(use, lp, torch.zeros_like(lp)).sum(1)
        right["causal_full"] += (cands[ar, total.argmax(1)] == answer).tolist()
        f = torch.as_tensor(freq, device=device)[cands]
        right["frequency"] += (cands[ar, f.argmax(1)] == answer).tolist()
    n = len(rows)
    return {k: {"accuracy": float(np.mean(v)) if v else None,
                "stderr": float(np.sqrt(np.mean(v) * (1 - np.mean(v)) / max(1, len(v)))) if v else None}
            for k, v in right.items()} | {"items": n}


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    cfg, rt = common.start(args)
    data = common.load_data(cfg)
    tok = data.tokenizer
    mcfg = model_config_for(cfg.model, tok)
    special_np = common.special_mask(tok)
    special = torch.as_tensor(special_np, device=rt.device)
    mask_id, sep_id = tok.token_to_id(MASK), tok.token_to_id(SEP)
    timings: dict[str, float] = {}
    ckpt = common.shared_checkpoint(cfg, args.work_dir, timings)
    mlm, _ = load_pretrained(ckpt, rt.device)
    steps = cfg.train.max_steps
    # The trainer seeds torch, random and numpy with train.seed, then builds the model: the same here.
    common.seed_everything(cfg.train.seed)
    causal = CausalLM(mcfg).to(rt.device)
    common.seed_everything(cfg.train.seed)
    reference = MLMModel(mcfg)  # what mlm.train.train built at step 0
    same_init = all(torch.equal(a.cpu(), b) for a, b in zip(causal.state_dict().values(),
                                                             reference.state_dict().values()))
    del reference
    # sanity: the causal model really is causal (a change at the end leaves earlier outputs alone)
    probe = torch.as_tensor(common.fixed_blocks(data.validation, 2, 0), device=rt.device)
    changed = probe.clone()
    changed[:, -1] = mask_id
    with torch.no_grad():
        a, b = causal.encode(probe), causal.encode(changed)
    causal_ok = bool(torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5)) and not torch.allclose(a[:, -1], b[:, -1])
    if not causal_ok:
        raise RuntimeError("the causal mask is not in effect")

    eval_col = MLMCollator.from_tokenizer(tok, mlm_probability=0.15)

    def causal_batch(step):
        ids = torch.as_tensor(common.step_blocks(data.train, cfg.train.batch_size, cfg.train.seed, step))
        return {"input_ids": ids, "labels": next_token_labels(ids, special.cpu())}

    @torch.no_grad()
    def causal_val_loss():
        total, count = 0.0, 0
        val = np.asarray(data.validation[np.arange(len(data.validation))], dtype=np.int64)
        for s in range(0, len(val), 64):
            ids = torch.as_tensor(val[s:s + 64], device=rt.device)
            out = causal(ids, labels=next_token_labels(ids, special), reduction="sum")
            total, count = total + float(out.loss), count + int(out.target.numel())
        return total / max(1, count)

    common.log(f"training the causal model for {steps} steps (the MLM one is the shared checkpoint {ckpt})")
    t0 = time.monotonic()
    causal_history = common.run_training(causal, cfg, rt, causal_batch, steps, label="causal")
    timings["train_causal"] = time.monotonic() - t0
    mlm_curve = [(e["step"], e["train_loss"]) for e in common.read_metrics(ckpt) if "train_loss" in e]
    val_mlm = evaluate(mlm, data.validation, eval_col, rt, cfg.eval.batch_size, cfg.eval.batches, cfg.eval.seed)

    t0 = time.monotonic()
    max_items = 60 if args.tiny else 600
    built = build_items(data, special_np, sep_id, args.window, args.seed, max_items)
    cloze = {}
    for kind, rows in built["items"].items():
        if not rows:
            cloze[kind] = {"items": 0}
            continue
        cloze[kind] = score_items(mlm, causal, built["validation"], rows, mask_id, special,
                                  built["frequency_of"][kind], rt.device)
        common.log(f"{kind}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in cloze[kind].items()
                                           if isinstance(v, dict)) + f" ({cloze[kind]['items']} items)")
    timings["cloze"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start

    examples = {}
    for kind, rows in built["items"].items():
        if rows:
            r = rows[0]
            blk = built["validation"][r["block"]]
            examples[kind] = {"left": tok.decode(blk[max(0, r["t"] - 8):r["t"]].tolist()),
                              "answer": tok.id_to_token(r["answer"]),
                              "right": tok.decode(blk[r["t"] + 1:r["t"] + 1 + 12].tolist()),
                              "candidates": [tok.id_to_token(c) for c in r["candidates"]]}
    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt),
        "steps": steps, "mlm_checkpoint": str(ckpt), "causal_mask_verified": causal_ok,
        "same_initial_weights_as_the_mlm_run": same_init,
        "compute_note": ("same initial weights, blocks, steps, optimizer, schedule and encoder FLOPs; MLM's head "
                         "runs on ~15% of positions, the causal head on ~100%"),
        "final_train_loss": {"mlm": float(np.mean([l for _, l in mlm_curve[-3:]])),
                             "causal": float(np.mean([r["loss"] for r in causal_history[-10:]]))},
        "validation": {"mlm_masked_loss": val_mlm["eval_loss"], "causal_next_token_loss": causal_val_loss()},
        "cloze": cloze, "chance": 0.25, "examples": examples,
        "loss_curves": {"mlm": {"step": [s for s, _ in mlm_curve], "loss": [l for _, l in mlm_curve]},
                        "causal": {"step": [r["step"] for r in causal_history],
                                   "loss": [r["loss"] for r in causal_history]}},
        "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def draw(plt, r):
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.2))
    kinds = [k for k in r["cloze"] if r["cloze"][k].get("items")]
    scorers = ["mlm", "causal_full", "causal_left", "frequency"]
    x = np.arange(len(kinds))
    w = 0.2
    for i, s in enumerate(scorers):
        acc = [r["cloze"][k][s]["accuracy"] for k in kinds]
        err = [r["cloze"][k][s]["stderr"] for k in kinds]
        ax[0].bar(x + (i - 1.5) * w, acc, w, yerr=err, label=s, color=f"C{i}")
    ax[0].axhline(r["chance"], color="gray", ls=":", label="chance")
    ax[0].set_xticks(x, [f"{k}\n({r['cloze'][k]['items']} items)" for k in kinds])
    ax[0].set(title="4-way cloze, answer evidenced by the right context", ylabel="accuracy", ylim=(0, 1))
    ax[0].legend(fontsize=8)
    for name, curve in r["loss_curves"].items():
        style = {"marker": "o", "ms": 3} if len(curve["step"]) < 100 else {"alpha": 0.6, "lw": 0.8}
        ax[1].plot(curve["step"], curve["loss"], label=f"{name} (own objective)", **style)
    ax[1].set(title="training loss (not comparable across objectives)", xlabel="step")
    ax[1].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    sys.exit(main())
