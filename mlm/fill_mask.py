"""Fill [MASK] tokens: `python -m mlm.fill_mask <checkpoint> "the cat sat on the [MASK] ."`.

The quickest check that a checkpoint learned something, and the first thing a user tries.
Prints the top-k tokens for every [MASK] with their probabilities. A special token is never
returned: the model already gives special ids probability exactly 0 (logits -inf), and the
ranking here also skips the tokenizer's special ids, so even a checkpoint built elsewhere
(e.g. imported) can't answer "[SEP]".
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from mlm.errors import UserError, run_cli
from mlm.tokenizer import MASK, special_token_ids


@dataclass
class Prediction:
    token: str
    token_id: int
    probability: float


def special_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that are never a prediction: the model's excluded ids and the tokenizer's special ids."""
    return sorted(set(model.cfg.special_token_ids) | set(special_token_ids(tokenizer)))


@torch.no_grad()
def fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> list[list[Prediction]]:
    """For each [MASK] in `text` (left to right), the `top_k` most probable non-special tokens."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    mask_id = tokenizer.token_to_id(MASK)
    if mask_id is None:
        raise UserError(f"the tokenizer has no {MASK} token")
    ids = tokenizer.encode(text).ids
    if len(ids) > model.cfg.max_seq_len:
        raise UserError(f"the text is {len(ids)} tokens long; this model reads at most {model.cfg.max_seq_len}")
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        raise UserError(f"no {MASK} in the text {text!r}; write {MASK} where a token should be predicted")
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device)).logits[0, positions].float()  # (masks, V)
    probs = torch.softmax(logits, dim=-1)
    banned = special_ids(model, tokenizer)
    probs[:, banned] = -1.0  # below every real probability, so top-k can't pick them
    k = min(top_k, probs.shape[-1] - len(banned))
    top = probs.topk(k, dim=-1)
    return [[Prediction(tokenizer.id_to_token(int(i)), int(i), float(p)) for p, i in zip(vals, idx)]
            for vals, idx in zip(top.values, top.indices)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.fill_mask", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run's output_dir (its newest checkpoint)")
    parser.add_argument("texts", nargs="+", help=f"text(s) containing {MASK}")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    args = parser.parse_args(argv)
    from mlm.checkpoint import load_pretrained

    model, tokenizer = load_pretrained(args.checkpoint)
    for text in args.texts:
        results = fill_mask(model, tokenizer, text, args.top_k)
        if args.json:
            print(json.dumps({"text": text, "masks": [[asdict(p) for p in preds] for preds in results]}))
            continue
        print(text)
        for n, preds in enumerate(results, 1):
            label = f"  {MASK} #{n}:" if len(results) > 1 else f"  {MASK}:"
            print(label + "  " + "  ".join(f"{p.token} {p.probability:.3f}" for p in preds))
    return 0


if __name__ == "__main__":
    run_cli(main)
