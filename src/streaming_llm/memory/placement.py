"""Where recalled tokens sit: positions inside the range the model was trained on.

The active slots of a layer are presented at ``first, first + 1, ..., seen - 1`` (``first = seen - n``
for ``n`` returned slots, StreamingLLM's in-cache positions), so the nearest free position before
them is ``first - 1``: a query at ``seen - 1`` sees it at distance ``n``, inside the trained range
whenever the active cache is.

- ``"beyond_window"`` (InfLLM): every recalled token at ``first - 1``, one distance just beyond
  the local window, whatever its original position. The block order is lost; the model cannot tell
  recalled tokens apart by position.
- ``"ordered"``: the recalled tokens, sorted by original position, at contiguous positions
  ``first - R .. first - 1``: order kept, distances stretched by at most ``R`` (the recall slots).
"""

from __future__ import annotations

import torch


def recall_positions(placement: str, original: torch.Tensor, first: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(order, target)`` for recalled tokens of original positions ``original`` ``(H_kv, R)``:
    the per-head permutation ``(H_kv, R)`` to apply to them (``None``: keep the order) and the
    position each token (after the permutation) is presented at, ``(H_kv, R)`` or ``(1,)`` for one
    position shared by all (a shift of every key by one angle: one cos/sin row, not ``H_kv * R``)."""
    heads, count = original.shape
    if placement == "beyond_window":
        return None, torch.tensor([first - 1], dtype=torch.long)
    if placement == "ordered":
        order = original.argsort(dim=-1, stable=True)
        return order, torch.arange(first - count, first).expand(heads, count)
    raise ValueError(f"memory_placement must be 'beyond_window' or 'ordered'; got {placement!r}")
