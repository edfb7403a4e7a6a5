"""``dynamickv``: layer-wise budgets adapted to the observed attention, total budget fixed.

Zhou et al. 2024, "DynamicKV: Task-Aware Adaptive KV Cache Compression for Long Context LLMs",
arXiv:2412.14838 (algorithm as in the authors' code, ``DynamicKVCluster``). Each layer scores its
slots like SnapKV (observation-window votes, pooled) and first keeps up to
``bs = ratio_max * base`` of them (``base = cache_size - window_size``, the average non-window
budget). Then the layers' budgets are re-derived from where the strongest votes are: the
``base * H * L`` highest scores over all layers and heads are counted per layer and the total
``base * L`` is split in proportion to those counts (each layer between ``reselect_interval``
and ``bs``), and every layer is trimmed to its budget. Each layer also keeps its window.

Streaming adaptation (ours): the paper compresses once at prefill, updating budgets every 4
layers as layers are processed; here a selection happens whenever the layers fill (as in our
SnapKV streaming mode) and the budgets are re-derived once per selection, after the last layer's
attention, from all layers' votes; every layer is trimmed to its budget when the step ends
(:meth:`LayerPolicy.end_step`), so no layer changes another's slots. All layers fill at the same
step, since after a selection layer ``l`` holds ``budget_l - reselect_interval`` slots and every
layer grows by the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .base import LayerPolicy, SlotView
from .snapkv import ObservationWindow, WindowVoteConfig


def allocate_budgets(counts: list[int], total: int, low: int, high: int) -> list[int]:
    """Integers in ``[low, high]`` summing to ``total``, proportional to ``counts`` where bounds allow."""
    n = len(counts)
    if not n * low <= total <= n * high:
        raise ValueError(f"cannot split {total} into {n} budgets within [{low}, {high}]")
    weights = torch.tensor(counts, dtype=torch.float64) + 1e-9
    budgets = torch.full((n,), float(low), dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    # water-filling: share what is left over the layers not yet at their cap
    for _ in range(n):
        remaining = total - budgets.sum()
        share = remaining * weights * free / (weights * free).sum()
        proposal = torch.where(free, budgets + share, budgets)
        capped = proposal > high
        budgets = torch.where(capped, torch.full_like(budgets, float(high)), proposal)
        if not (capped & free).any():
            break
        free &= ~capped
    floors = budgets.floor().long()
    order = torch.argsort(budgets - floors, descending=True)
    for i in order[: total - int(floors.sum())]:
        floors[i] += 1
    return floors.tolist()


class LayerBudgetAllocator:
    """Shared by the layers of one cache: collects their votes in a selection step and re-derives
    every layer's budget from them."""

    def __init__(self, num_layers: int, cache_size: int, window_size: int, ratio_max: float, reselect_interval: int):
        self.num_layers = num_layers
        self.window_size = window_size
        self.base = cache_size - window_size
        self.high = max(self.base, min(int(ratio_max * self.base), num_layers * self.base))
        self.low = reselect_interval
        self.budgets = [cache_size] * num_layers  # slots per layer, window included
        self.policies: list["AdaptiveLayer"] = []
        self.reallocations = 0

    def reallocate(self, num_kv_heads: int) -> None:
        """After the last layer selected: re-derive all budgets (each layer trims at the end of the step)."""
        per_layer = [p.candidate_scores().flatten() for p in self.policies]
        votes = torch.cat(per_layer)
        top = votes.topk(min(self.base * num_kv_heads * self.num_layers, votes.numel())).indices
        owner = torch.repeat_interleave(torch.arange(len(per_layer)), torch.tensor([v.numel() for v in per_layer]))
        counts = torch.bincount(owner[top.cpu()], minlength=len(per_layer)).tolist()
        shares = allocate_budgets(counts, self.base * self.num_layers, self.low, self.high)
        self.budgets = [share + self.window_size for share in shares]
        self.reallocations += 1


class AdaptiveLayer(ObservationWindow):
    def __init__(self, allocator: LayerBudgetAllocator, layer_idx: int, **window_args):
        super().__init__(**window_args)
        self.allocator, self.layer_idx = allocator, layer_idx
        self.scores: torch.Tensor | None = None  # (H, T) votes of the kept slots, set in a selection step
        allocator.policies.append(self)

    def max_slots(self) -> int | None:
        # between steps a layer holds at most its budget; within a selection step it may hold up
        # to `high + window` until the step ends and it trims to its new budget
        return max(self.allocator.budgets)

    def candidate_scores(self) -> torch.Tensor:
        return self.scores[:, : self.scores.shape[-1] - self.window_size]

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        self._record(probs, view.positions.shape[0])
        if view.num_slots <= self.allocator.budgets[self.layer_idx]:
            return None
        provisional = min(view.num_slots, self.allocator.high + self.window_size)
        scores = self.window_scores()
        keep = self.select_top(scores, provisional)
        self.scores = scores.gather(-1, keep.to(scores.device))
        if self.layer_idx == self.allocator.num_layers - 1:
            self.allocator.reallocate(view.positions.shape[0])
        return keep

    def end_step(self) -> torch.Tensor | None:
        """After a selection step: keep the window plus the best-voted slots of this layer's new budget."""
        if self.scores is None:
            return None
        scores, self.scores = self.scores, None  # only needed within the selection step
        keep = self.allocator.budgets[self.layer_idx] - self.reselect_interval
        return self.select_top(scores, keep) if scores.shape[-1] > keep else None


@dataclass
class DynamicKVConfig(WindowVoteConfig):
    """Parameters
    ----------
    cache_size:
        Average slots per layer; the total over layers is ``cache_size * num_layers``.
    window_size, kernel_size, pooling, reselect_interval:
        See :class:`~streaming_llm.policies.snapkv.WindowVoteConfig` (authors' kernel: 7).
    ratio_max:
        A layer's non-window budget is at most ``ratio_max`` times the average (> 1 lets
        layers differ; the authors' default is 5).
    """

    kernel_size: int = 7
    cache_size: int = 2048
    ratio_max: float = 5.0

    name: ClassVar[str] = "dynamickv"
    size_fields: ClassVar[tuple[str, ...]] = ("cache_size", "window_size")
    label_fields: ClassVar[dict[str, str]] = {"window_size": "window", "cache_size": "cache"}

    def validate(self) -> None:
        self.validate_window("cache_size")
        if not self.ratio_max >= 1.0:
            raise ValueError(f"ratio_max must be a number >= 1; got {self.ratio_max!r}")

    def sized(self, slots: int) -> "DynamicKVConfig":
        return replace(self, cache_size=slots)

    def build_layer_policies(self, num_layers: int) -> list[LayerPolicy]:
        allocator = LayerBudgetAllocator(num_layers, self.cache_size, self.window_size, self.ratio_max,
                                         self.reselect_interval)
        return [AdaptiveLayer(allocator, i, **self.window_args(self.cache_size)) for i in range(num_layers)]
