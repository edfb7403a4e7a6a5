"""``rocketkv``: two-stage compression — coarse eviction, then hybrid sparse attention.

Behnam et al. 2025, "RocketKV: Accelerating Long-Context LLM Inference via Two-Stage KV Cache
Compression", arXiv:2502.14051 (details as in the authors' code).

1. Coarse-grain eviction (SnapKV++): observation-window votes summed within each GQA group,
   max-pooled (kernel 63 in the authors' code), top slots kept per KV head within
   ``storage_size``. The paper runs it once at prefill; for unbounded streams we re-select like
   our SnapKV streaming mode (every ``reselect_interval`` tokens once full).
2. Fine-grain hybrid sparse attention, at every decode step (one query): approximate each
   slot's attention from page-wise extremes of the keys along the query's sign
   (``max(K * sign(sum_G q))`` per page of ``page_size`` slots, an upper bound of ``q . k``) on
   the ``topr`` channels where ``|q|`` is largest (head and sequence dimensions both reduced),
   then attend exactly to the ``topk`` best slots per KV head only.

Counted: ``cache_bytes`` is the stored slots (stage 1); ``stats()`` counts the keys read
exactly by stage 2 and the page-summary channels read to choose them. This implementation is a
reference for the selection, not a sparse kernel: it masks a dense attention, so its tok/s does
not show the bandwidth saving that ``keys_read`` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from .base import LayerPolicy, check_int
from .snapkv import ObservationWindow, WindowVoteConfig


def approximate_scores(query: torch.Tensor, keys: torch.Tensor, page_size: int, topr: int) -> torch.Tensor:
    """RocketKV's hybrid-sparse estimate of the last query's attention, ``(H_kv, n)``.

    query ``(1, H_q, q, D)`` (the last query is used), keys ``(1, H_kv, n, D)``.
    """
    _, num_heads, _, dim = query.shape
    num_kv, n = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv
    q = query[0, :, -1, :].float().reshape(num_kv, group, dim)  # (H_kv, G, D)
    sign = torch.sign(q.sum(dim=1))  # (H_kv, D): one sign per channel for the whole group
    pages = math.ceil(n / page_size)
    signed_keys = F.pad(keys[0].float() * sign[:, None, :], (0, 0, 0, pages * page_size - n), value=float("-inf"))
    page_max = signed_keys.reshape(num_kv, pages, page_size, dim).amax(dim=2)  # (H_kv, P, D)
    channels = q.abs().mean(dim=1).topk(min(topr, dim), dim=-1).indices  # (H_kv, r)
    q_signed = (q * sign[:, None, :]).gather(-1, channels[:, None, :].expand(-1, group, -1))  # (H_kv, G, r)
    k_pages = page_max.gather(-1, channels[:, None, :].expand(-1, pages, -1))  # (H_kv, P, r)
    kept_mass = q.abs().gather(-1, channels[:, None, :].expand(-1, group, -1)).sum(-1) / q.abs().sum(-1)  # (H_kv, G)
    logits = q_signed @ k_pages.transpose(-1, -2) / torch.sqrt(dim * kept_mass)[..., None]  # (H_kv, G, P)
    page_scores = torch.softmax(logits, dim=-1).mean(dim=1)  # (H_kv, P)
    return page_scores.repeat_interleave(page_size, dim=-1)[:, :n]


class TwoStage(ObservationWindow):
    def __init__(self, topk: int, page_size: int, topr: int, **window_args):
        super().__init__(**window_args)
        self.topk, self.page_size, self.topr = topk, page_size, topr
        self.sparse_steps = 0
        self.keys_read = 0.0
        self.summary_channels_read = 0.0

    def read_mask(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
        n = keys.shape[-2]
        if query.shape[-2] != 1 or n <= self.topk:
            return None  # prefill chunks and small caches attend densely
        scores = approximate_scores(query, keys, self.page_size, self.topr)
        chosen = scores.topk(self.topk, dim=-1).indices
        read = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)  # (H_kv, n)
        self.sparse_steps += 1
        self.keys_read += self.topk
        self.summary_channels_read += math.ceil(n / self.page_size) * min(self.topr, keys.shape[-1]) / keys.shape[-1]
        group = query.shape[1] // keys.shape[1]
        return read.repeat_interleave(group, dim=0)[None, :, None, :]

    def stats(self) -> dict[str, float]:
        return {"sparse_steps": self.sparse_steps, "keys_read": self.keys_read,
                "summary_keys_read": self.summary_channels_read}


@dataclass
class RocketKVConfig(WindowVoteConfig):
    """Parameters
    ----------
    storage_size:
        Slots stored per layer after the coarse eviction (>= window_size + reselect_interval).
    topk:
        Keys read exactly per KV head at each decode step (>= 1).
    page_size:
        Slots per page of the key summaries (>= 1).
    topr:
        Channels of the query used for the estimate (>= 1; capped at the head dim).
    window_size, kernel_size, pooling, reselect_interval:
        Stage 1, see :class:`~streaming_llm.policies.snapkv.WindowVoteConfig` (authors' code:
        window 32, max pooling, kernel 63).
    """

    kernel_size: int = 63
    pooling: Literal["avgpool", "maxpool"] = "maxpool"
    storage_size: int = 2048
    topk: int = 1024
    page_size: int = 4
    topr: int = 32

    name: ClassVar[str] = "rocketkv"
    size_fields: ClassVar[tuple[str, ...]] = ("storage_size", "topk", "window_size")
    label_fields: ClassVar[dict[str, str]] = {"window_size": "window", "storage_size": "storage", "topk": "topk"}

    def validate(self) -> None:
        self.validate_window("storage_size")
        for field in ("topk", "page_size", "topr"):
            check_int(field, getattr(self, field), 1)

    def sized(self, slots: int) -> "RocketKVConfig":
        return replace(self, storage_size=slots, topk=max(1, slots // 2))  # authors: topk = budget / 2

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return TwoStage(self.topk, self.page_size, self.topr, **self.window_args(self.storage_size))
