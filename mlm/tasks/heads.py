"""Task heads on top of the pretrained encoder, and the pooling they share."""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from mlm.model import MLMModel

Pooling = Literal["cls", "mean"]


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: Pooling) -> Tensor:
    """(b, s, h) final states -> (b, h): the [CLS] state, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, s, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class SequenceClassifier(nn.Module):
    """Encoder -> pooled state ([CLS] or masked mean) -> dropout -> linear (b, num_labels)."""

    def __init__(self, encoder: MLMModel, num_labels: int, pooling: Pooling = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder, self.pooling, self.num_labels = encoder, pooling, num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.cfg.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, 0.0, encoder.cfg.init_std)
        nn.init.zeros_(self.classifier.bias)

    def pool(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask)  # (b, s, h), zeros at padding
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(self.pool(input_ids, attention_mask))).float()  # (b, labels)
