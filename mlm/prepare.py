"""Tokenize the corpus into block shards ahead of training (the trainer reuses the cache).

    python -m mlm.prepare --config configs/base.yaml [data.train_files=corpus/ data.seq_len=256 ...]

Loads the config, calls `mlm.data.prepare_data` (with the tokenizer of `train.init_from`, if set,
as the trainer does), prints a summary (documents, tokens, blocks,
what was skipped or repaired and why). A user mistake ends in one `error:` line and exit 2.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from mlm.config import load_config
from mlm.data import format_summary, prepare_data
from mlm.errors import run_cli
from mlm.warmstart import warm_start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config file (defaults apply to keys it leaves out)")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON instead of the summary")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.seq_len=256")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    start = warm_start(cfg, None)  # train.init_from: the checkpoint's tokenizer (extended by data.extend_vocab)
    prepared = prepare_data(cfg, tokenizer=start.tokenizer, extend_vocab=start.extend_vocab)
    if args.json:
        print(json.dumps(prepared.stats, indent=1, sort_keys=True))
    else:
        print(format_summary(prepared.stats))
    return 0


if __name__ == "__main__":
    run_cli(main)
