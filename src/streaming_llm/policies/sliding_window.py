"""``sliding_window``: keep the last ``window_size`` tokens (no attention sinks).

The baseline StreamingLLM (Xiao et al. 2023, arXiv:2309.17453) shows collapsing once the first
tokens leave the window. Kept slots are always contiguous with the newest token, so in-cache
distances equal absolute distances and no key is ever re-rotated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from .base import KeepLast, LayerPolicy, PolicyConfig, check_int


@dataclass
class SlidingWindowConfig(PolicyConfig):
    """Parameters
    ----------
    window_size:
        Tokens kept per layer (>= 1).
    """

    window_size: int = 2000

    name: ClassVar[str] = "sliding_window"
    size_fields: ClassVar[tuple[str, ...]] = ("window_size",)
    label_fields: ClassVar[dict[str, str]] = {"window_size": "window"}
    evicts_alike_in_every_layer: ClassVar[bool] = True

    def validate(self) -> None:
        check_int("window_size", self.window_size, 1)

    def sized(self, slots: int) -> "SlidingWindowConfig":
        return replace(self, window_size=slots)

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return KeepLast(self.window_size)
