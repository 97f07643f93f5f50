"""Can a checkpoint copy a parameter name from a signature? A diagnostic for the params token task.

    python scripts/param_copy_probe.py runs/base --task runs/tasks/stdlib_params/test.jsonl

For each example of a task built by scripts/make_token_task.py ("signature : docstring"), every
docstring word tagged as a parameter (and, for comparison, every fifth untagged docstring word)
that is a single token is masked alone, and the model's top-1 prediction is compared with it.
A parameter mention is predictable from the signature at the start of the same sentence, so a model
that can look words up in its context fills it in; one that cannot scores near its untagged rate.
Sentences longer than the model's max_seq_len are skipped. Prints one JSON line per checkpoint.
"""
from __future__ import annotations

import argparse
import json

import torch

from mlm.checkpoint import load_pretrained
from mlm.model import IGNORE_INDEX
from mlm.tokenizer import MASK


def probe(path: str, task_file: str, max_examples: int) -> dict:
    model, tokenizer = load_pretrained(path)
    mask_id = tokenizer.token_to_id(MASK)
    counts = {"parameter": [0, 0], "other": [0, 0]}  # [correct, masked]
    with open(task_file, encoding="utf-8") as f:
        examples = [json.loads(line) for line in f][:max_examples]
    for example in examples:
        words, tags = example["tokens"], example["tags"]
        encoding = tokenizer.encode(words, is_pretokenized=True)
        ids, word_ids = encoding.ids, encoding.word_ids
        if len(ids) > model.cfg.max_seq_len:
            continue
        docstring_start = words.index(":") + 1 if ":" in words else 0
        chosen: list[tuple[str, int]] = []  # (kind, token position) of each word to mask
        for i in range(docstring_start, len(words)):
            kind = "other" if tags[i] == "O" else "parameter"
            positions = [p for p, w in enumerate(word_ids) if w == i]
            if len(positions) == 1 and (kind == "parameter" or i % 5 == 0):
                chosen.append((kind, positions[0]))
        if not chosen:
            continue
        # one masked copy of the sentence per chosen word, all in one forward
        inputs = torch.tensor([ids]).repeat(len(chosen), 1)  # (k, s)
        labels = torch.full_like(inputs, IGNORE_INDEX)
        for row, (_, position) in enumerate(chosen):
            inputs[row, position] = mask_id
            labels[row, position] = ids[position]
        with torch.no_grad():
            predicted = model(inputs, labels=labels).logits.argmax(-1)  # (k,): labelled positions, row order
        for (kind, position), token in zip(chosen, predicted.tolist()):
            counts[kind][0] += int(token == ids[position])
            counts[kind][1] += 1
    return {"checkpoint": path, **{f"{k}_top1": round(c / max(n, 1), 4) for k, (c, n) in counts.items()},
            **{f"{k}_masked": n for k, (_, n) in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders or run output_dirs")
    parser.add_argument("--task", required=True, help="a .jsonl file of scripts/make_token_task.py")
    parser.add_argument("--max-examples", type=int, default=300)
    args = parser.parse_args()
    for path in args.checkpoints:
        print(json.dumps(probe(path, args.task, args.max_examples)))


if __name__ == "__main__":
    main()
