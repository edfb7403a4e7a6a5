"""The types the cache and the policies share, so that neither imports the other.

A *policy* decides, after every cache update, which stored slots of one decoder layer to keep.
It sees a :class:`SlotView` (the slots' original positions and the tokens seen so far) and
returns the indices to keep, a :class:`SlotRewrite`, or ``None`` to keep everything. Storage,
positions and bytes are the cache layer's job (:mod:`streaming_llm.cache`); a policy only chooses.

This module imports nothing of the package (only torch), so the cache, the policies and any
wrapper around them can all build on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

#: bytes of the per-slot, per-KV-head position metadata (int64), counted in ``cache_bytes()``.
POSITION_BYTES = 8


@dataclass(frozen=True)
class SlotView:
    """What a policy may look at when it selects slots of one layer.

    Attributes
    ----------
    positions:
        ``(H_kv, T)`` int64 CPU tensor, original (absolute) position of every stored slot of
        every KV head, ascending along ``T``. Position-based policies keep the same slots in
        every head, so all rows are equal for them.
    seen_tokens:
        Number of tokens the layer has seen so far (the stream position after this update).
    new_tokens:
        Tokens appended by the update that triggered this selection (the last ``new_tokens`` slots).
    keys, values:
        The stored slots themselves, for policies that score or compress their contents.
    """

    positions: torch.Tensor
    seen_tokens: int
    new_tokens: int = 1
    keys: torch.Tensor | None = None  # (1, H_kv, T, D) as stored (rotated at original positions)
    values: torch.Tensor | None = None  # (1, H_kv, T, D)

    @property
    def num_slots(self) -> int:
        return int(self.positions.shape[-1])


@dataclass(frozen=True)
class SlotRewrite:
    """A selection that replaces the layer's slots outright (compressed slots are new rows).

    ``keys``/``values`` ``(1, H_kv, T', D)`` rotated at ``positions`` ``(H_kv, T')`` (CPU int64), the
    same layout the layer keeps: slots of every head ascending in position, recent window last.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


class LayerPolicy(ABC):
    """Per-layer eviction rule. One instance per decoder layer, built fresh for every cache.

    Selections are indices along the slot axis: ``(T',)`` keeps the same slots in every KV
    head, ``(H_kv, T')`` keeps different slots per head (same count in each). Indices must be
    ascending so the recent, contiguous slots stay last.
    """

    #: Whether kept slots can stop being contiguous with the newest token, so that keys must
    #: be re-rotated for StreamingLLM's in-cache distances (sinks do this; a pure window never).
    needs_position_shift: ClassVar[bool] = False

    #: Whether the policy scores slots by attention. Such policies select in :meth:`observe`,
    #: called by the attention hook right after this layer's attention, instead of in
    #: :meth:`select`; the cache refuses to run them without the hook.
    needs_attention: ClassVar[bool] = False

    #: Whether :meth:`logit_bias` may return a bias (slots standing for several tokens).
    needs_logit_bias: ClassVar[bool] = False

    #: Whether the policy rotates keys itself (to compress them position-free); the cache then
    #: hands it the model's position strategy through :meth:`bind_rotary`, shift or not.
    needs_rotary: ClassVar[bool] = False

    @abstractmethod
    def max_slots(self) -> int | None:
        """Upper bound on stored slots after any forward step (``None`` = unbounded)."""

    def select(self, view: SlotView) -> "torch.Tensor | SlotRewrite | None":
        """Indices of the slots to keep after an update (or a :class:`SlotRewrite`), ``None`` to keep all."""
        return None

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        """Attention probabilities ``(B, H_q, q, T)`` of this step over the ``T`` slots of
        ``view``; returns the slots to keep (like :meth:`select`). Only for ``needs_attention``."""
        raise NotImplementedError

    def read_mask(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
        """Sparse attention: which slots each query may read, ``(1, H_q, q, n)`` bool, or ``None``
        for all. Called by the attention hook for policies with ``needs_attention``."""
        return None

    def stats(self) -> dict[str, float]:
        """Counters worth reporting (summed over layers by the cache), e.g. keys read."""
        return {}

    def attach(self, layer) -> None:
        """Called once by the cache layer that owns this policy (for policies that report on
        their layer's tensors, e.g. the bytes of a compressed representation)."""

    def end_step(self) -> "torch.Tensor | SlotRewrite | None":
        """Called once per forward step, after every layer ran (``BoundedCache.end_step``): work
        across layers, such as a budget shared by all of them, returns the slots to keep like
        :meth:`select`. Only called when the policy class overrides it."""
        return None

    def state_bytes(self) -> int:
        """Bytes of the policy's own per-slot state (scores, statistics), counted in the cache's bytes."""
        return 0

    def stored_bytes(self) -> int | None:
        """Bytes of the layer's slots in the policy's own representation (e.g. low-rank factors
        instead of full rows), or ``None`` when slots are stored as plain K/V rows."""
        return None

    def bind_rotary(self, strategy) -> None:
        """Receive the model's position strategy (for ``needs_rotary`` policies)."""

    def logit_bias(self, view: SlotView) -> torch.Tensor | None:
        """Additive attention-logit bias for the ``T`` slots of ``view``, ``(H_kv, T)``, or ``None``.

        A slot that stands for ``c`` merged tokens carries ``log(c)`` here, so softmax weighs
        it like ``c`` copies of itself.
        """
        return None




class KeepLast(LayerPolicy):
    """Keep the newest ``window_size`` slots: the ``sliding_window`` policy, and the own window of
    a hybrid model's sliding layers (which the cache keeps whatever the policy)."""

    def __init__(self, window_size: int):
        self.window_size = window_size

    def max_slots(self) -> int | None:
        return self.window_size

    def select(self, view: SlotView) -> torch.Tensor | None:
        if view.num_slots <= self.window_size:
            return None
        return torch.arange(view.num_slots - self.window_size, view.num_slots)
