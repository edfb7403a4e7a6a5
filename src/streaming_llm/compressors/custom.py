"""``custom``: a user compressor per KV head with seed 000's contract ``compress(K, V) -> (K', V')``.

``K`` and ``V`` are ``(n, D)`` tensors of one layer and KV head: the position-free keys (rotary
rotation undone) and the values of the tier's current rows followed by the newly demoted
tokens. The compressor returns ``K'`` and ``V'`` ``(n', D)`` with ``n'`` at most the head's
capacity. Without further information each output row is taken to stand for ``N / n'`` of the
``N`` tokens the inputs represented (so attention adds ``log(N / n')``) and to sit at the mean
position of the ``i``-th of ``n'`` equal, time-ordered chunks of the inputs. A compressor that
returns ``(K', V', counts)`` gives each row's token count itself.

The capacity changes while a stream runs (the adaptive controller moves slots between heads,
and the precision bank takes its share first), so a compressor whose ``compress`` accepts a
``capacity`` keyword (or ``**kwargs``) is called as ``compress(K, V, capacity=c)``: it is told
how many rows it may return. It is called only when the rows exceed the capacity. A head whose
capacity is 0 keeps no compressed rows and its compressor is not called (nothing fits).
"""

from __future__ import annotations

import inspect

import torch

from .base import Compressor, PointSet, pad_to_common_size


def _as_rows(tensor, name: str, dim: int) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.shape[-1] != dim:
        raise ValueError(f"custom compressor must return {name} of shape (n', {dim}); got {getattr(tensor, 'shape', tensor)!r}")
    return tensor


class CustomCompressor(Compressor):
    """Adapter from per-head ``compress(K, V)`` objects to the batched :class:`Compressor` protocol."""

    def __init__(self, per_head: list):
        for head, compressor in enumerate(per_head):
            if not callable(getattr(compressor, "compress", None)):
                raise ValueError(f"compressor for KV head {head} must have a compress(K, V) method; got {compressor!r}")
        self.per_head = per_head
        self.told_capacity = [_accepts_capacity(c.compress) for c in per_head]

    def compress(self, points: PointSet, capacity: torch.Tensor) -> PointSet:
        heads = []
        for head, compressor in enumerate(self.per_head):
            present = points.counts[head] > 0
            heads.append(self._one_head(compressor, head, points, present, int(capacity[head])))
        width = max(h[2].numel() for h in heads)
        return pad_to_common_size(*_stack(heads, width, points))

    def _one_head(self, compressor, head: int, points: PointSet, present: torch.Tensor, capacity: int):
        order = torch.argsort(points.positions[head].masked_fill(~present, float("inf")), stable=True)[: int(present.sum())]
        keys, values = points.keys[head, order], points.values[head, order]
        if keys.shape[0] <= capacity or capacity == 0:
            keep = order if keys.shape[0] <= capacity else order[:0]
            return (points.keys[head, keep], points.values[head, keep], points.counts[head, keep],
                    points.positions[head, keep], points.scores[head, keep])
        if self.told_capacity[head]:
            result = compressor.compress(keys, values, capacity=capacity)
        else:
            result = compressor.compress(keys, values)
        if not isinstance(result, tuple) or len(result) not in (2, 3):
            raise ValueError("custom compressor must return (K', V') or (K', V', counts)")
        new_keys = _as_rows(result[0], "K'", keys.shape[-1]).to(keys)
        new_values = _as_rows(result[1], "V'", keys.shape[-1]).to(values)
        rows = new_keys.shape[0]
        if new_values.shape[0] != rows or rows > capacity or rows < 1:
            raise ValueError(
                f"custom compressor for KV head {head} returned {rows} key rows and {new_values.shape[0]} value rows; "
                f"it must return the same number, between 1 and the capacity {capacity}"
            )
        total = points.counts[head, order].sum()
        chunks = torch.tensor_split(torch.arange(order.numel(), device=order.device), rows)
        positions = torch.stack([points.positions[head, order][c].mean() for c in chunks])
        scores = torch.stack([points.scores[head, order][c].sum() for c in chunks])
        counts = (result[2].to(points.counts) if len(result) == 3 else total.expand(rows) / rows).reshape(rows)
        return new_keys, new_values, counts, positions, scores


def _accepts_capacity(compress) -> bool:
    """Whether ``compress`` takes a ``capacity`` keyword (named, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(compress).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it with (K, V) only
        return False
    return any(p.name == "capacity" and p.kind is not p.POSITIONAL_ONLY or p.kind is p.VAR_KEYWORD for p in parameters)


def _stack(heads: list, width: int, like: PointSet) -> tuple[PointSet, torch.Tensor]:
    """Per-head rows padded to ``width`` -> one :class:`PointSet` and its non-empty mask."""
    def pad(tensor, fill_shape):
        extra = width - tensor.shape[0]
        return torch.cat([tensor, tensor.new_zeros(extra, *fill_shape)]) if extra else tensor

    dim = like.keys.shape[-1]
    keys = torch.stack([pad(h[0], (dim,)) for h in heads])
    values = torch.stack([pad(h[1], (dim,)) for h in heads])
    counts = torch.stack([pad(h[2].float(), ()) for h in heads])
    positions = torch.stack([pad(h[3].double(), ()) for h in heads])
    scores = torch.stack([pad(h[4].float(), ()) for h in heads])
    return PointSet(keys, values, counts, positions, scores), counts > 0
