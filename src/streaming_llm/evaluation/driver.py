"""The streaming driver: feed a token stream through model + cache and record what happens.

Token by token (``chunk_size=1``) is StreamingLLM's evaluation protocol: every token is
predicted from exactly the cache the policy kept. With ``chunk_size=c`` the stream goes in
chunks of ``c`` tokens; a chunk attends to the cache plus itself, and the policy evicts after the
chunk, so predictions inside a chunk may see up to ``c - 1`` tokens more than the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..cache import BoundedCache
from ..compat import cache_kwargs
from .memory import peak_device_bytes, peak_rss_bytes, reset_peak_memory


@dataclass
class StreamResult:
    """Per-token negative log-likelihoods and per-step cache sizes of one streamed run.

    ``nll[i]`` is the NLL of token ``i + 1`` given the stream up to token ``i``.
    """

    nll: list[float] = field(default_factory=list)
    cache_tokens: list[int] = field(default_factory=list)  # per step: max slots over layers
    cache_bytes_max: int = 0  # largest bytes over all layers at the end of a step (the cache's high-water mark)
    #: largest bytes seen per layer type (``full_attention``; Gemma-3 also ``sliding_attention``)
    cache_bytes_max_by_layer_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_device_bytes: int | None = None

    @property
    def tokens(self) -> int:
        return len(self.nll)

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def ppl(self, start: int = 0, end: int | None = None) -> float:
        """Perplexity over predictions ``start:end``."""
        window = self.nll[start:end]
        return math.exp(sum(window) / len(window)) if window else float("nan")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stream(
    model: torch.nn.Module,
    cache: BoundedCache,
    token_ids: Sequence[int] | torch.Tensor,
    chunk_size: int = 1,
    progress: bool = True,
    description: str = "streaming",
) -> StreamResult:
    """Stream ``token_ids`` through ``model`` with ``cache``; returns NLLs, cache sizes and timings."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device).reshape(1, -1)
    if ids.shape[1] < 2:
        raise ValueError(f"need at least 2 tokens to measure perplexity; got {ids.shape[1]}")
    result = StreamResult()
    reset_peak_memory(device)
    num_predictions = ids.shape[1] - 1
    bar = tqdm(total=num_predictions, desc=description, unit="tok", disable=not progress, leave=False)
    nlls: list[torch.Tensor] = []  # stay on the device until the end: no sync per step
    cache_arg = cache_kwargs(model, cache)
    _synchronize(device)
    start = time.perf_counter()
    for begin in range(0, num_predictions, chunk_size):
        end = min(begin + chunk_size, num_predictions)
        logits = model(input_ids=ids[:, begin:end], **cache_arg, use_cache=True).logits[0]
        targets = ids[0, begin + 1 : end + 1]
        nlls.append(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none"))
        result.cache_tokens.append(max(cache.cache_tokens()))  # slot counts are shapes: no device sync
        bar.update(end - begin)
        if progress and bar.n % 256 < chunk_size:  # one sync per 256 tokens, only with a progress bar
            bar.set_postfix(ppl=f"{torch.cat(nlls).mean().exp().item():.2f}", cache=result.cache_tokens[-1])
    _synchronize(device)
    result.seconds = time.perf_counter() - start
    bar.close()
    result.nll = torch.cat(nlls).tolist()
    # bytes are read once, from the marks the cache kept at the end of every step
    result.cache_bytes_max = cache.high_water.bytes
    result.cache_bytes_max_by_layer_type = dict(cache.high_water.bytes_by_layer_type)
    result.peak_rss_bytes = peak_rss_bytes()
    result.peak_device_bytes = peak_device_bytes(device)
    return result
