"""The encoder's shape and options, beside the model that reads them (as nanoGPT keeps GPTConfig).

Saved in every checkpoint as `model_config.json`; a resumed run must have the same values
(except the init-only keys, which shape only the first weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from mlm.schema import ConfigError, require_literals, require_positive, require_unit

# Keys that only shape the initial weights: a checkpoint written before one existed resumes.
INIT_ONLY_KEYS = ("init_std", "scaled_residual_init")


@dataclass
class ModelConfig:
    """A BERT-style encoder with a tied MLM head."""

    vocab_size: int = 0
    """Rows of the embedding and of the decoder; 0: the tokenizer's vocabulary size."""
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    """Width of the feed-forward layer (per branch for geglu)."""
    max_seq_len: int = 128
    """Longest input; the size of the learned position table or of the rotary angle table."""
    position: Literal["learned", "rotary"] = "learned"
    """Absolute learned positions (BERT) or rotary positions on queries and keys (RoFormer, ModernBERT)."""
    norm: Literal["pre", "post"] = "pre"
    """pre: x + f(norm(x)), stable without warmup tricks; post: norm(x + f(x)) as in the original BERT."""
    activation: Literal["gelu", "geglu"] = "gelu"
    bias: bool = True
    """Biases in linear layers and LayerNorms (ModernBERT drops them)."""
    dropout: float = 0.0
    """On embeddings and residual branches; 0 for short pretraining runs (Cramming)."""
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    """Std of the normal init of linear and embedding weights (BERT)."""
    scaled_residual_init: bool = False
    """std / sqrt(2 * num_layers) on the projections into the residual stream (GPT-2), for deep models.
    Off by default: at 4 layers it raised the loss after 200 steps by 0.12 (BENCHMARKS.md)."""
    rope_theta: float = 10000.0
    pad_token_id: int = 0
    """Filled from the tokenizer."""
    special_token_ids: list[int] = field(default_factory=list)
    """Filled from the tokenizer: their logits are -inf, so they are never predicted."""

    def validate(self) -> None:
        require_positive(self, "model", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                         "max_seq_len")
        require_unit(self, "model", "dropout", "attention_dropout")
        require_literals(self, "model")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_heads ({self.num_heads})")
        if self.position == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError("model.position=rotary needs an even head size (hidden_size / num_heads)")

    def with_vocabulary(self, vocab_size: int, pad_token_id: int, special_token_ids: list[int]) -> "ModelConfig":
        """A copy with the tokenizer's facts filled in (vocab_size 0 means the tokenizer's size)."""
        if self.vocab_size and self.vocab_size < vocab_size:
            raise ConfigError(f"model.vocab_size ({self.vocab_size}) is smaller than the tokenizer's vocabulary "
                              f"({vocab_size})")
        return replace(self, vocab_size=self.vocab_size or vocab_size, pad_token_id=pad_token_id,
                       special_token_ids=list(special_token_ids))
