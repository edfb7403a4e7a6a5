"""``summary``: pooled segments — compressed tokens averaged over contiguous spans of time.

Per KV head the tier's points (earlier summaries and newly demoted tokens) are ordered by
position and cut into ``capacity`` segments of about equal token count ``N / capacity``: point
``i`` with cumulative count ``C_i`` (its own count ``c_i``) joins segment
``floor((C_i - c_i / 2) * capacity / N)``. A segment's key and value are count-weighted means and
it carries its size ``c``, so attention adds ``log c`` to its logit (as for ``vq``). Unlike ``vq``
a summary never mixes distant parts of the stream.
"""

from __future__ import annotations

import torch

from .base import Compressor, PointSet, compose, pack, weighted_means


class SummaryCompressor(Compressor):
    def compress(self, points: PointSet, capacity: torch.Tensor) -> PointSet:
        present = points.counts > 0
        if bool((present.sum(dim=-1) <= capacity).all()):
            tier, self.last_assignment = pack(points, present)
            return tier
        order = torch.argsort(points.positions.masked_fill(~present, float("inf")), dim=-1, stable=True)
        ordered = points.gather(order)
        cumulative = ordered.counts.cumsum(dim=-1)
        total = cumulative[:, -1:].clamp(min=1e-12)
        groups = int(capacity.max())
        segment = ((cumulative - ordered.counts / 2) * capacity[:, None] / total).floor().long()
        segment = segment.clamp(min=0).minimum(capacity[:, None] - 1).clamp(min=0)
        merged = weighted_means(ordered, segment, groups)
        tier, slot_of_merged = pack(merged, merged.counts > 0)
        # back from the time order to the input order
        by_input = torch.empty_like(segment).scatter_(1, order, segment)
        self.last_assignment = compose(torch.where(present, by_input, -1), slot_of_merged)
        return tier
