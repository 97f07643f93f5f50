"""The encoder and its MLM head (`encoder.py`), with `ModelConfig` beside it (`config.py`).

Names are resolved on first use, so `mlm.config` can import `ModelConfig` without importing torch.
"""
from typing import Any

from mlm.model.config import INIT_ONLY_KEYS, ModelConfig

__all__ = ["MLMModel", "MLMOutput", "ModelConfig", "TokenLayout", "IGNORE_INDEX", "INIT_ONLY_KEYS"]


def __getattr__(name: str) -> Any:
    if name in ("MLMModel", "MLMOutput", "TokenLayout", "IGNORE_INDEX"):
        from mlm.model import encoder
        return getattr(encoder, name)
    raise AttributeError(f"module 'mlm.model' has no attribute {name!r}")
