"""``streaming``: StreamingLLM — attention sinks plus a recent window.

Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks", arXiv:2309.17453.
The first ``start_size`` tokens (the sinks) and the last ``recent_size`` tokens are kept; every
other token is dropped. With ``enable_pos_shift`` the cache re-rotates keys so the model sees
the kept tokens at contiguous positions (sinks at 0..s-1, then the window), as the paper does.

Dynamic sink (seed 000): with ``enable_dynamic_sink`` the sink holds
``max(start_size, floor(max_seq_length / 100))`` tokens. The seed's own table is not consistent
with one formula (16K -> 163 is floor(16384/100) but 8K -> 80 and 32K -> 320 use 8000 and 32000);
we apply floor(1%) of the given ``max_seq_length`` exactly: 2048 -> 20, 8192 -> 81,
16384 -> 163, 32768 -> 327.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .base import LayerPolicy, PolicyConfig, SlotView, check_int


def dynamic_sink_size(start_size: int, max_seq_length: int) -> int:
    """Sink size of seed 000's dynamic sink: 1% of ``max_seq_length``, never below ``start_size``."""
    return max(start_size, max_seq_length // 100)


class SinksAndRecent(LayerPolicy):
    needs_position_shift = True

    def __init__(self, sink_size: int, recent_size: int):
        self.sink_size = sink_size
        self.recent_size = recent_size

    def max_slots(self) -> int | None:
        return self.sink_size + self.recent_size

    def select(self, view: SlotView) -> torch.Tensor | None:
        total = view.num_slots
        if total <= self.sink_size + self.recent_size:
            return None
        return torch.cat(
            [torch.arange(self.sink_size), torch.arange(total - self.recent_size, total)]
        )


@dataclass
class StreamingConfig(PolicyConfig):
    """Parameters
    ----------
    start_size:
        Attention-sink tokens kept from the start of the stream (>= 0; 0 = a plain window).
    recent_size:
        Most recent tokens kept exactly (>= 1).
    enable_dynamic_sink:
        Size the sink to 1% of ``max_seq_length`` (never below ``start_size``).
    max_seq_length:
        Context length the dynamic sink is sized for (>= 1).
    """

    start_size: int = 4
    recent_size: int = 2000
    enable_dynamic_sink: bool = False
    max_seq_length: int = 32768

    name: ClassVar[str] = "streaming"
    size_fields: ClassVar[tuple[str, ...]] = ("start_size", "recent_size")
    label_fields: ClassVar[dict[str, str]] = {"start_size": "sink", "recent_size": "recent"}
    evicts_alike_in_every_layer: ClassVar[bool] = True

    def validate(self) -> None:
        check_int("start_size", self.start_size, 0)
        check_int("recent_size", self.recent_size, 1)
        check_int("max_seq_length", self.max_seq_length, 1)

    @property
    def sink_size(self) -> int:
        if self.enable_dynamic_sink:
            return dynamic_sink_size(self.start_size, self.max_seq_length)
        return self.start_size

    def sized(self, slots: int) -> "StreamingConfig":
        if slots <= self.sink_size:
            raise ValueError(f"{slots} slots leave no room for a recent window after {self.sink_size} sinks")
        return replace(self, recent_size=slots - self.sink_size)

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return SinksAndRecent(self.sink_size, self.recent_size)
