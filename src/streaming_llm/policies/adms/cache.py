"""``ADMSKVCache``: the cache ADMS builds (``ADMSConfig.cache_class()``), a
:class:`~streaming_llm.cache.BoundedCache` whose layers follow this package, plus seed 000's
``compressors`` mapping ``{(layer_idx, kv_head): compressor}`` for custom compressors
(``compress(K, V) -> (K', V')``, see :mod:`streaming_llm.compressors.custom`).

Seed 000 imports it from ``streaming_llm.adms_cache``, which re-exports it.
"""

from __future__ import annotations

import torch

from ...architectures import describe_model
from ...cache import BoundedCache, build_layers


class ADMSKVCache(BoundedCache):
    """ADMS cache. Build it with ``ADMSKVCache(config, model)``, ``enable_adms_llm(model, ...)`` or
    ``make_cache(model, "adms", ...)``.

    Seed 000 writes ``ADMSKVCache(config)``; the cache also needs the model (its layer count,
    KV heads and rotary parameters), so the model is the second argument.
    """

    def __init__(self, config: "ADMSConfig", model: torch.nn.Module | None = None, compressor=None, *,
                 layers=None, policy_name: str = "adms"):
        # ADMSConfig or a subclass (adms+memory), told by name: importing ADMSConfig here would close
        # an import cycle, since its cache_class() names this class.
        if not any(getattr(cls, "name", None) == "adms" for cls in type(config).__mro__):
            raise ValueError(f"config must be an ADMSConfig; got {type(config).__name__}")
        if model is None:
            raise ValueError(
                "ADMSKVCache needs the model: ADMSKVCache(config, model) (it reads the layer count, "
                "KV heads and rotary parameters from it); or use enable_adms_llm(model, ...)"
            )
        layout = describe_model(model)
        super().__init__(layers if layers is not None else build_layers(config, layout), policy_name, config)
        self.num_kv_heads = layout.num_kv_heads
        if compressor is not None:
            self.compressors = {key: compressor for key in self.compressors}
        self.attach(model, layout)

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: "ADMSConfig") -> "ADMSKVCache":
        return cls(config, model)

    @property
    def stats(self) -> dict[str, float]:
        """Seed 001's ``cache.stats``: every cache's (:attr:`BoundedCache.stats`: the ADMS counters
        summed over layers, tokens seen, slots and bytes now and their high-water marks) plus the
        current size under the names ADMS's log uses, ``cache_tokens`` (largest layer) and ``cache_bytes``."""
        stats = super().stats
        return {**stats, "cache_tokens": stats["slots"], "cache_bytes": stats["bytes"]}

    def _adms_layers(self) -> list[int]:
        """Indices of the layers ADMS governs (a hybrid model's sliding layers keep their own window)."""
        return [i for i, layer in enumerate(self.layers) if hasattr(layer.policy, "compressor")]

    @property
    def compressors(self) -> dict[tuple[int, int], object]:
        """``{(layer_idx, kv_head): compressor}``; assign a mapping with ``compress(K, V)`` objects
        (every head of a layer, or none of them) to use custom compressors."""
        result = {}
        for layer_idx in self._adms_layers():
            compressor = self.layers[layer_idx].policy.compressor
            for head in range(self.num_kv_heads):
                per_head = getattr(compressor, "per_head", None)
                result[(layer_idx, head)] = per_head[head] if per_head is not None else compressor
        return result

    @compressors.setter
    def compressors(self, mapping: dict) -> None:
        valid = {(l, h) for l in self._adms_layers() for h in range(self.num_kv_heads)}
        unknown = sorted(set(mapping) - valid, key=str)
        if unknown:
            raise ValueError(f"compressors keys must be (layer_idx, kv_head) pairs of ADMS layers {self._adms_layers()} x "
                             f"{self.num_kv_heads} heads; got {unknown[:3]}")
        for layer_idx in self._adms_layers():
            layer = self.layers[layer_idx]
            given = [mapping.get((layer_idx, h)) for h in range(self.num_kv_heads)]
            if all(c is None for c in given) or given == [layer.policy.compressor] * self.num_kv_heads:
                continue
            if any(c is None for c in given):
                raise ValueError(f"compressors: layer {layer_idx} needs a compressor for every KV head or none")
            layer.policy.set_head_compressors(given)
        self.refresh_session()  # custom compressors may merge slots, which needs the attention hook


__all__ = ["ADMSKVCache"]
