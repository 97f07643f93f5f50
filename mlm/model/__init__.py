"""The encoder and its MLM head (`encoder.py`), with `ModelConfig` beside it (`config.py`).
Torch-dependent names resolve on first use, so `mlm.config` imports `ModelConfig` without torch."""
from typing import Any

from mlm.model.config import INIT_ONLY_KEYS, ModelConfig

__all__ = ["MLMModel", "MLMOutput", "ModelConfig", "TokenLayout", "IGNORE_INDEX", "INIT_ONLY_KEYS", "Kernels"]


def __getattr__(name: str) -> Any:
    if name in ("MLMModel", "MLMOutput", "TokenLayout", "IGNORE_INDEX", "Kernels"):
        from mlm import ops
        from mlm.model import encoder
        return getattr(ops if name == "Kernels" else encoder, name)
    raise AttributeError(f"module 'mlm.model' has no attribute {name!r}")
