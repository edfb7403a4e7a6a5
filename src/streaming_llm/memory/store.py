"""The passive store of one layer: evicted slots, position-free, in blocks on a second device.

Slots arrive per KV head (a per-head policy evicts different tokens in each head, but the same
count per step; a rewriting policy may not even do that), wait in a per-head pending buffer, and
are sealed into a block once every head has ``block_size`` of them. A block holds, per head,
``(H_kv, bs, D)`` keys (RoPE undone) and values, the original positions ``(H_kv, bs)`` and a
summary (see :mod:`.summaries`) kept on the active device, where the queries score it.

The store lives in CPU memory, pinned when the active cache is on CUDA so recalls can copy
asynchronously. With ``int8`` rows are quantised per (head, token) with an absmax scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..protocol import POSITION_BYTES

INT8_MAX = 127.0


@dataclass
class StoredRows:
    """Keys or values of one block as stored: ``data`` ``(H_kv, bs, D)`` and, for int8, ``scale`` ``(H_kv, bs, 1)``."""

    data: torch.Tensor
    scale: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.data.numel() * self.data.element_size() + extra

    def head(self, head: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Head ``head``'s rows ``(bs, D)`` on ``device`` in ``dtype``, dequantised there so only the
        stored bytes move; and the number of bytes moved."""
        data = self.data[head].to(device, non_blocking=True)
        moved = data.numel() * data.element_size()
        if self.scale is None:
            return data.to(dtype), moved
        scale = self.scale[head].to(device, non_blocking=True)
        return (data.float() * scale).to(dtype), moved + scale.numel() * scale.element_size()


def encode(rows: torch.Tensor, int8: bool, pin: bool) -> StoredRows:
    """``rows`` ``(H_kv, bs, D)`` in the store's representation, on the CPU."""
    if int8:
        scale = rows.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / INT8_MAX
        data = (rows.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        stored = StoredRows(data.cpu(), scale.cpu())
    else:
        stored = StoredRows(rows.detach().cpu())
    if pin:
        stored = StoredRows(stored.data.pin_memory(), None if stored.scale is None else stored.scale.pin_memory())
    return stored


class BlockStore:
    """Sealed blocks plus the pending per-head buffers of one layer."""

    def __init__(self, block_size: int, int8: bool = False):
        self.block_size = block_size
        self.int8 = int8
        self.pin = False  # set on the first offload when the active cache is on CUDA
        self.pending: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # per head: (k, v, pos)
        self.keys: list[StoredRows] = []
        self.values: list[StoredRows] = []
        self.positions: list[torch.Tensor] = []  # (H_kv, bs) int64, CPU
        self.ids: list[int] = []  # stable block ids (the device LRU keys on them)
        self.sealed_at: list[int] = []  # tokens the layer had seen when the block was sealed
        self.recalls: list[int] = []  # times each block was recalled (the passive budget drops the fewest)
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.ids)

    # -- filling --------------------------------------------------------------------------
    def add(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: list[torch.Tensor]) -> None:
        """Append per-head evicted rows: ``keys[h]``/``values[h]`` ``(E_h, D)`` position-free, ``positions[h]`` ``(E_h,)``."""
        if not self.pending:
            self.pending = [[] for _ in keys]
        for head, rows in enumerate(zip(keys, values, positions)):
            if rows[2].numel():
                self.pending[head].append(rows)

    def pending_count(self, head: int) -> int:
        return sum(int(pos.numel()) for _, _, pos in self.pending[head]) if self.pending else 0

    def take_block(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The next full block ``(H_kv, bs, D)`` keys, values and ``(H_kv, bs)`` positions out of the
        pending buffers, or ``None`` while some head holds fewer than ``block_size`` rows."""
        if not self.pending or min(self.pending_count(h) for h in range(len(self.pending))) < self.block_size:
            return None
        parts = []
        for head, buffer in enumerate(self.pending):
            k, v, p = (torch.cat(column, dim=0) for column in zip(*buffer))
            bs = self.block_size
            self.pending[head] = [(k[bs:], v[bs:], p[bs:])] if p.numel() > bs else []
            parts.append((k[:bs], v[:bs], p[:bs]))
        k, v, p = (torch.stack(column) for column in zip(*parts))
        return k, v, p

    def seal(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, seen_tokens: int) -> None:
        self.keys.append(encode(keys, self.int8, self.pin))
        self.values.append(encode(values, self.int8, self.pin))
        self.positions.append(positions.cpu())
        self.ids.append(self.next_id)
        self.sealed_at.append(seen_tokens)
        self.recalls.append(0)
        self.next_id += 1

    def drop_least_recalled(self) -> int:
        """Drop the block recalled fewest times (the oldest among equals); returns its index."""
        index = min(range(len(self.ids)), key=lambda i: (self.recalls[i], i))
        for column in (self.keys, self.values, self.positions, self.ids, self.sealed_at, self.recalls):
            del column[index]
        return index

    # -- reading --------------------------------------------------------------------------
    def recallable(self, seen_tokens: int) -> int:
        """Blocks sealed before the current update (the first ones): a block sealed during this
        update still has its tokens among the slots this update returned."""
        count = len(self.sealed_at)
        while count and self.sealed_at[count - 1] >= seen_tokens:
            count -= 1
        return count

    # -- bytes ----------------------------------------------------------------------------
    def row_bytes(self, head_dim: int, element_bytes: int) -> int:
        """Bytes one stored token of one head costs (K and V rows, scales, position)."""
        per_row = head_dim + 4 if self.int8 else head_dim * element_bytes
        return 2 * per_row + POSITION_BYTES

    def nbytes(self) -> int:
        """Resident bytes of the sealed blocks and the pending rows (positions included)."""
        sealed = sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))
        sealed += sum(p.numel() * POSITION_BYTES for p in self.positions)
        pending = 0
        for buffer in self.pending:
            for k, v, p in buffer:
                pending += k.numel() * k.element_size() + v.numel() * v.element_size() + p.numel() * POSITION_BYTES
        return sealed + pending
