"""mlm: pretrain BERT-style masked language models with PyTorch.

The data's way, one module per stage: `mlm.data` (corpus → packed token shards),
`mlm.collate` (masking), `mlm.model` (encoder + sparse MLM head), `mlm.train` (the loop),
`mlm.checkpoint` (atomic, verified checkpoints); `mlm.config` is read by all.
"""
from typing import Any

__all__ = ["load_pretrained"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m mlm.prepare` and `import mlm.collate` don't pay for what they don't use.
    if name == "load_pretrained":
        from mlm.checkpoint import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'mlm' has no attribute {name!r}")
