"""Task heads on top of the pretrained encoder, and the pooling they share.

`SequenceClassifier` (classification, and regression with one output) reads the first token's
final state through the transform transformers' sequence heads use — a dense layer and tanh
(BERT's pooler, RoBERTa's classification head) or the encoder's activation (RoFormer's head) —
so a fine-tuned model exports exactly (`mlm.hf.heads`). `transform="none"` is the plain
dropout → linear head of earlier versions; mean pooling averages the real tokens (neither has an
exact transformers counterpart). `TokenClassifier` is dropout → linear on every token, as
transformers' token-classification models.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlm.model import MLMModel

Pooling = Literal["cls", "mean"]
Transform = Literal["tanh", "gelu", "none"]
TRANSFORMS = ("tanh", "gelu", "none")


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: Pooling) -> Tensor:
    """(b, s, h) final states -> (b, h): the [CLS] state, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, s, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def export_transform(encoder: MLMModel) -> Transform:
    """The transform whose head transformers has for this encoder's export architecture: gelu for
    rotary encoders (RoFormer's head uses the encoder's activation), tanh otherwise (BERT, RoBERTa)."""
    return "gelu" if encoder.cfg.position == "rotary" else "tanh"


def new_linear(in_features: int, out_features: int, std: float) -> nn.Linear:
    """A linear layer with the encoder's init: normal(0, std) weights, zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


class SequenceClassifier(nn.Module):
    """Encoder -> pooled state ([CLS] or masked mean) -> [dense -> tanh | gelu] -> dropout ->
    linear (b, num_labels). With one output it is a regressor."""

    def __init__(self, encoder: MLMModel, num_labels: int, pooling: Pooling = "cls", dropout: float = 0.1,
                 transform: Transform = "none"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        self.encoder, self.pooling, self.num_labels, self.transform_kind = encoder, pooling, num_labels, transform
        h, std = encoder.cfg.hidden_size, encoder.cfg.init_std
        self.transform = new_linear(h, h, std) if transform != "none" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = new_linear(h, num_labels, std)

    def pool(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask)  # (b, s, h), zeros at padding
        return pool(hidden, attention_mask, self.pooling)

    def features(self, pooled: Tensor) -> Tensor:
        """The pooled state through the transform (what the final linear layer reads)."""
        if self.transform is None:
            return pooled
        x = self.transform(pooled)
        return torch.tanh(x) if self.transform_kind == "tanh" else F.gelu(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pooled = self.pool(input_ids, attention_mask)
        return self.classifier(self.dropout(self.features(pooled))).float()  # (b, labels)


class TokenClassifier(nn.Module):
    """Encoder -> every token's final state -> dropout -> linear: (b, s, num_labels) logits, or with
    `positions` (a boolean (b, s) mask) only those tokens' logits, (m, num_labels), in row-major order."""

    def __init__(self, encoder: MLMModel, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.num_labels = encoder, num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = new_linear(encoder.cfg.hidden_size, num_labels, encoder.cfg.init_std)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask)  # (b, s, h)
        if positions is not None:
            hidden = hidden[positions]  # (m, h): the labelled tokens only
        return self.classifier(self.dropout(hidden)).float()


def head_state(model: nn.Module) -> dict[str, Tensor]:
    """The head's parameters (everything outside the encoder), saved beside the encoder checkpoint."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


def load_head_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load `head_state` tensors; files of earlier versions hold the bare classifier ("weight", "bias")."""
    if set(state) == {"weight", "bias"}:
        state = {f"classifier.{k}": v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)  # shape mismatches raise here
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise RuntimeError(f"head tensors do not match the head (missing {missing}, unexpected {unexpected})")
