"""Seed 000's module path for ADMS: ``from streaming_llm.adms_cache import ADMSConfig, ADMSKVCache``.

``ADMSKVCache`` is a :class:`~streaming_llm.cache.BoundedCache` whose layers follow
:mod:`streaming_llm.policies.adms`, plus seed 000's ``compressors`` mapping
``{(layer_idx, kv_head): compressor}`` for custom compressors (``compress(K, V) -> (K', V')``,
see :mod:`streaming_llm.compressors.custom`).
"""

from __future__ import annotations

import torch

from .cache import BoundedCache
from .policies.adms import ADMSConfig


class ADMSKVCache(BoundedCache):
    """ADMS cache. Build it with ``ADMSKVCache(config, model)``, ``enable_adms_llm(model, ...)`` or
    ``make_cache(model, "adms", ...)``.

    Seed 000 writes ``ADMSKVCache(config)``; the cache also needs the model (its layer count,
    KV heads and rotary parameters), so the model is the second argument.
    """

    def __init__(self, config: ADMSConfig, model: torch.nn.Module | None = None, compressor=None, *,
                 layers=None, policy_name: str = "adms"):
        if not isinstance(config, ADMSConfig):
            raise ValueError(f"config must be an ADMSConfig; got {type(config).__name__}")
        if model is None:
            raise ValueError(
                "ADMSKVCache needs the model: ADMSKVCache(config, model) (it reads the layer count, "
                "KV heads and rotary parameters from it); or use enable_adms_llm(model, ...)"
            )
        from .api import build_layers

        super().__init__(layers if layers is not None else build_layers(model, config), policy_name, config)
        config_ = model.config.get_text_config(decoder=True)
        self.num_kv_heads = getattr(config_, "num_key_value_heads", None) or config_.num_attention_heads
        if compressor is not None:
            self.compressors = {key: compressor for key in self.compressors}
        if self.needs_attention_hook:
            self.attach_hook(model)

    @property
    def compressors(self) -> dict[tuple[int, int], object]:
        """``{(layer_idx, kv_head): compressor}``; assign a mapping with ``compress(K, V)`` objects
        (every head of a layer, or none of them) to use custom compressors."""
        result = {}
        for layer_idx, layer in enumerate(self.layers):
            compressor = layer.policy.compressor
            for head in range(self.num_kv_heads):
                per_head = getattr(compressor, "per_head", None)
                result[(layer_idx, head)] = per_head[head] if per_head is not None else compressor
        return result

    @compressors.setter
    def compressors(self, mapping: dict) -> None:
        valid = {(l, h) for l in range(len(self.layers)) for h in range(self.num_kv_heads)}
        unknown = sorted(set(mapping) - valid, key=str)
        if unknown:
            raise ValueError(f"compressors keys must be (layer_idx, kv_head) pairs in {len(self.layers)} layers x "
                             f"{self.num_kv_heads} heads; got {unknown[:3]}")
        for layer_idx, layer in enumerate(self.layers):
            given = [mapping.get((layer_idx, h)) for h in range(self.num_kv_heads)]
            if all(c is None for c in given) or given == [layer.policy.compressor] * self.num_kv_heads:
                continue
            if any(c is None for c in given):
                raise ValueError(f"compressors: layer {layer_idx} needs a compressor for every KV head or none")
            layer.policy.set_head_compressors(given)
        if self.needs_attention_hook and self._hooked_model is None and self._model is not None:
            self.attach_hook(self._model)


__all__ = ["ADMSConfig", "ADMSKVCache"]
