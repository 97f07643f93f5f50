"""mlm: pretrain BERT-style masked language models with PyTorch.

The data's way, one module per stage: `mlm.data` (corpus → packed token shards),
`mlm.collate` (masking), `mlm.model` (encoder + sparse MLM head), `mlm.train` (the loop),
`mlm.checkpoint` (atomic, verified checkpoints); `mlm.config` is read by all.
"""
from mlm.checkpoint import load_pretrained

__all__ = ["load_pretrained"]
__version__ = "0.1.0"
