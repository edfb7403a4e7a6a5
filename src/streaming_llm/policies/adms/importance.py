"""Importance of mid tokens (``importance_metric``) and the per-head exact budgets (``use_adaptive_budget``)."""

from __future__ import annotations

import torch


class TokenScorer:
    """Scores ``(H, q)`` of newly appended tokens. ``attention`` starts them at 0: the attention
    they receive is added by the layer; the norms need no hook (rotation keeps key norms)."""

    def __init__(self, metric: str):
        self.metric = metric
        self.norm_means: torch.Tensor | None = None  # running means of (value, key) norms, "mixed"

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if self.metric == "attention":
            return torch.zeros(keys.shape[:2], device=keys.device)
        value_norm, key_norm = values.float().norm(dim=-1), keys.float().norm(dim=-1)
        if self.metric == "value_norm":
            return value_norm
        if self.metric == "key_norm":
            return key_norm
        # mixed: each norm relative to its running mean per head, so neither dominates by scale
        means = torch.stack([value_norm.mean(dim=1), key_norm.mean(dim=1)])
        self.norm_means = means if self.norm_means is None else 0.99 * self.norm_means + 0.01 * means
        return 0.5 * (value_norm / self.norm_means[0, :, None] + key_norm / self.norm_means[1, :, None])


def exact_budgets(config, values: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Exact slots per head ``(H,)``: the configured share, or with ``use_adaptive_budget`` that
    share scaled by the variance of each head's mid values (heads whose values vary more are
    harder to summarise and keep more tokens exactly)."""
    heads = values.shape[0]
    base = config.exact_budget
    if not config.use_adaptive_budget or not bool(exact.any()):
        return torch.full((heads,), base, device=values.device)
    weights = exact.float().unsqueeze(-1)
    n = weights.sum(dim=1).clamp(min=1)
    mean = (values.float() * weights).sum(dim=1) / n
    variance = (((values.float() - mean[:, None]) ** 2) * weights).sum(dim=1).div(n).mean(dim=-1)  # (H,)
    share = variance / variance.mean().clamp(min=1e-12)
    low = min(config.min_importance_tokens, config.mid_capacity)
    return (base * share).round().long().clamp(low, config.mid_capacity)
