"""The one scoped object that installs on a model what a bounded cache needs, and removes it.

A :class:`~streaming_llm.cache.BoundedCache` may need, on the model it serves:

- the attention function of :mod:`streaming_llm.attention` (policies that score slots by
  attention or bias logits), selected through ``transformers.AttentionInterface`` and the model's
  own ``set_attn_implementation``;
- a forward pre-hook on the model that recognises the cache among the call's arguments by
  identity, whatever the argument is called (``past_key_values=``, or ``cache=`` since
  transformers 5.24), so the attention function can find the layer it serves as
  ``cache.layers[module.layer_idx]``; for learned absolute positions the same hook sets in-cache
  ``position_ids`` (:mod:`streaming_llm.position_inputs`);
- a forward hook that ends the step, ``cache.end_step()``, after each call that carried the cache:
  ``generate()`` and hand-written loops both call the model, so both end their steps there.

``make_cache``/``enable_*`` open a session; ``cache.disable()`` and leaving
``with make_cache(...) as cache:`` close it and give the model back exactly what it had. Nothing is
installed at import time and no model class is patched. The session holds its cache weakly: a
discarded cache takes its hooks with it (the attention implementation stays, as before, until
``disable()``; with no cache in the call it is plain causal attention).
"""

from __future__ import annotations

import weakref

import torch

from . import attention, position_inputs
from .compat import carries
from .architectures import ModelLayout
from .positions import UnsupportedModelError


class Session:
    """What one cache installs on one model. ``open()`` installs, ``close()`` removes, both once."""

    def __init__(self, model: torch.nn.Module, cache, layout: ModelLayout):
        self.model = model
        self.layout = layout
        self._cache = weakref.ref(cache)  # the hooks must not keep a discarded cache alive
        #: the cache while a model call that carries it runs (read by the attention function)
        self.carried = None
        self.sets_positions = bool(cache.config is not None and cache.config.enable_pos_shift
                                   and layout.remaps_input_positions)
        self._previous_attention: str | None = None  # set while our attention implementation is installed
        self._routed: list[torch.nn.Module] = []
        self._handles: list = []
        self._finalizer = None

    def open(self) -> "Session":
        cache = self._cache()
        if self.sets_positions:
            cache.max_positions = self.layout.max_positions
        self.sync()
        self._routed = attention.route(self.model, self)
        self._handles = [
            self.model.register_forward_pre_hook(self._before_call, with_kwargs=True),
            self.model.register_forward_hook(self._after_call, with_kwargs=True, always_call=True),
        ]
        self._finalizer = weakref.finalize(cache, self._remove_hooks)
        return self

    def sync(self) -> None:
        """Install the attention function if the cache needs it and it is not installed yet (a cache
        can start to need it later, e.g. ADMS with custom compressors that merge slots)."""
        cache = self._cache()
        if cache is None or self._previous_attention is not None or not cache.needs_attention_hook:
            return
        if not self.layout.routes_attention:
            raise UnsupportedModelError(
                f"policy {cache.policy_name!r} needs attention scores through transformers' AttentionInterface, "
                f"which {self.layout.family.name} attention does not use; policies that run on it: those without "
                "attention scores or logit biases (streaming_llm.policies.policies_on_model_attention() lists them)"
            )
        self._previous_attention = attention.install(self.model)

    def close(self) -> None:
        """Remove what :meth:`open` installed: the hooks, the routes, the attention implementation."""
        if self._finalizer is not None:
            self._finalizer()  # runs _remove_hooks once
            self._finalizer = None
        if self._previous_attention is not None:
            attention.restore(self.model, self._previous_attention)
            self._previous_attention = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        attention.unroute(self._routed, self)
        self._routed = []
        self.carried = None

    # -- the hooks -------------------------------------------------------------------------
    def _before_call(self, module, args: tuple, kwargs: dict):
        cache = self._cache()
        self.carried = cache if cache is not None and carries(args, kwargs, cache) else None
        if self.carried is None or not self.sets_positions:
            return None
        return args, position_inputs.with_positions(cache, args, kwargs)

    def _after_call(self, module, args: tuple, kwargs: dict, output) -> None:
        carried, self.carried = self.carried, None
        if carried is not None and output is not None:  # output is None when the call raised
            carried.end_step()
