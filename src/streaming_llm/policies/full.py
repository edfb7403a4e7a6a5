"""``full``: keep every token. The reference every bounded policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import LayerPolicy, PolicyConfig


class KeepAll(LayerPolicy):
    def max_slots(self) -> int | None:
        return None


@dataclass
class FullConfig(PolicyConfig):
    """Unbounded cache: logits equal transformers' ``DynamicCache``."""

    name: ClassVar[str] = "full"
    bounded: ClassVar[bool] = False

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return KeepAll()
