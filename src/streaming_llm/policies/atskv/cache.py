"""``ATSKVCache``: the cache ATSKV builds (``ATSKVConfig.cache_class()``), a
:class:`~streaming_llm.cache.BoundedCache` that also resolves the relevance predictor for its
model and installs, on the model instance, the forward pre-hooks that feed the features
(:class:`~.tap.FeatureTap`). ``disable()`` (or garbage collection of the cache) removes them."""

from __future__ import annotations

import functools
import weakref

import torch

from ...cache import BoundedCache
from .layer import RelevanceEviction
from .predictor import resolve_predictor
from .tap import FeatureTap


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class ATSKVCache(BoundedCache):
    _handles: list | None = None

    def attach(self, model: torch.nn.Module, layout=None) -> "ATSKVCache":
        predictor = resolve_predictor(self.config.predictor, model)  # fails before anything is installed
        super().attach(model, layout)
        tap = FeatureTap()
        handles = [model.register_forward_pre_hook(tap.note_inputs, with_kwargs=True)]
        # the attention modules, found as the attention hook finds them (attention.route)
        for module in model.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                handles.append(module.register_forward_pre_hook(
                    functools.partial(tap.note_hidden, module.layer_idx), with_kwargs=True))
        self._handles = handles
        weakref.finalize(self, _remove, handles)
        for index, layer in enumerate(self.layers):
            if isinstance(layer.policy, RelevanceEviction):
                layer.policy.bind(tap, index, predictor)
        return self

    def disable(self) -> None:
        if self._handles is not None:
            _remove(self._handles)
            self._handles = None
        super().disable()
