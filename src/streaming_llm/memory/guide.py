"""``RecallGuide``: a band of layers chooses the recall of other layers (``memory_guide_layers``).

Why: at 32k the needle's block ranks first by the summaries in layers 13-18 of SmolLM2 and tenth
or lower in layers 19-29, every scoring rule alike (``benchmarks/memory_probe.py --ranks``), yet
forced into every layer's recall it is answered (``--oracle``). The upper layers' own queries do
not look for it there; the middle layers' do. Like OmniKV's filter layers, the guides' choice is
reused by the layers after them.

The guides (layers FIRST..LAST) select by their own scores and publish the sum, over their KV
heads and over the guides, of their block scores. The followers recall the blocks that sum ranks
first, every KV head the same blocks, ties broken by their own scores. Followers after LAST read
this forward's sum; followers before it (only through the probe's diagnostics) the previous
forward's. Block ``i`` must hold the same tokens in every layer: so the policy must evict alike in
every layer and head (streaming, sliding window), which :class:`MemoryWrapped` checks.
"""

from __future__ import annotations

import torch

#: A follower's own scores only break ties between blocks the guides' sum scores alike.
GUIDED = 1e6


def parse_layer_range(name: str, text: str) -> tuple[int, int]:
    """``"FIRST-LAST"`` (inclusive, 0-based) -> ``(FIRST, LAST)``; a bad range raises ``ValueError`` naming ``name``."""
    first, sep, last = str(text).partition("-")
    try:
        bounds = (int(first), int(last))
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{name} must be 'FIRST-LAST', layer indices with 0 <= FIRST <= LAST (e.g. '13-18'); "
                         f"got {text!r}")
    return bounds


class RecallGuide:
    """The shared state of one cache's guided recall: ``first``..``last`` (inclusive) guide the
    layers in ``followers``."""

    def __init__(self, first: int, last: int, followers):
        self.first, self.last = first, last
        self.followers = frozenset(followers)
        self.reset()

    @property
    def needs_previous_forward(self) -> bool:
        """Whether a follower scores before the last guide (it reads the previous forward's sum)."""
        return any(index <= self.last for index in self.followers)

    def attach(self, cache) -> None:
        """Make every memory layer of ``cache`` consult this guide."""
        for index, layer in enumerate(cache.layers):
            if getattr(layer, "memory", None) is not None:
                layer.memory.guide, layer.memory.layer_index = self, index

    def reset(self) -> None:
        """Forget the sums (a new stream)."""
        self.current: dict[str, torch.Tensor] = {}  # per channel, this forward's sum so far
        self.published: dict[str, torch.Tensor] = {}  # per channel, the last complete sum: (N,) per store block

    def adjust(self, layer_index: int, scores: torch.Tensor, channel: str = "main") -> torch.Tensor:
        """``scores`` ``(H_kv, N)`` of layer ``layer_index`` as it should rank them: a guide's own
        (added to the sum), a follower's re-ranked by the guides' sum, anyone else's unchanged.
        ``channel``: which sum; a layer that scores twice per forward (``memory_last_query_blocks``:
        by its last query and by all its scoring queries) keeps the two choices apart."""
        published = self.published.get(channel)  # read before the last guide replaces it with this forward's
        if self.first <= layer_index <= self.last:
            mass = scores.float().sum(dim=0)
            current = self.current.get(channel)
            self.current[channel] = current + mass if current is not None and current.shape == mass.shape else mass
            if layer_index == self.last:
                self.published[channel] = self.current.pop(channel)
        if layer_index not in self.followers or published is None:
            return scores
        n = min(published.shape[-1], scores.shape[-1])
        guided = scores.to(torch.float32, copy=True)  # float32: GUIDED times a score would overflow float16
        guided[:, :n] += GUIDED * published[:n].to(guided.device)
        return guided
