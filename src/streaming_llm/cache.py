"""BoundedCache: a ``transformers.Cache`` whose layers keep a bounded set of KV slots.

Each :class:`BoundedLayer` stores keys/values ``(B, H_kv, T, D)`` exactly as the model produced
them (keys rotated at their absolute positions) plus the original position of every slot. On
``update()`` it appends the new chunk, returns what this step's attention needs, then asks its
policy which slots to keep, so the budget holds after every update.

Contract with transformers (see ``cache_utils.DynamicSlidingWindowLayer``):

- ``get_seq_length()`` is the number of tokens *seen*: ``generate()`` slices its inputs with it
  and the model derives query positions from it.
- ``get_mask_sizes(q)`` describes the slots ``update()`` will return: ``m + q`` slots whose
  first one the mask treats as position ``P - m`` (``P`` tokens seen, ``m`` slots stored), so
  every stored slot is visible and the new chunk is causal within itself.
- With position shift, slot ``j`` is presented at position ``P - m + j`` (StreamingLLM's
  in-cache distances); keys that already sit there (a contiguous recent window) are not touched,
  so the re-rotation costs only the sinks.

A chunk of ``q`` tokens attends to the ``m`` stored slots and to itself; eviction happens after
the chunk, so chunked processing sees up to ``q - 1`` more tokens than token-by-token.

A forward step ends with :meth:`BoundedCache.end_step`: work across layers (DynamicKV's shared
budget) and the high-water marks of slots and bytes. The cache builds itself from the model
(:meth:`BoundedCache.from_model`) and opens the :class:`~streaming_llm.session.Session` that
installs on the model what it needs; ``disable()`` closes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from . import compat
from .architectures import ModelLayout, describe_model
from .positions import PositionStrategy
from .protocol import POSITION_BYTES, KeepLast, LayerPolicy, SlotRewrite, SlotView
from .session import Session


def _own_window_layer(layout: ModelLayout, layer_idx: int) -> "BoundedLayer":
    # W - 1 slots, as transformers' DynamicSlidingWindowLayer: the new token makes the window W.
    # The slots stay contiguous with the newest token, so they never need re-rotating.
    return BoundedLayer(KeepLast(layout.sliding_window - 1), None, layout.layer_types[layer_idx], is_sliding=True)


def build_layers(config, layout: ModelLayout) -> list["BoundedLayer"]:
    """One fresh :class:`BoundedLayer` per decoder layer of a model of ``layout``, following the
    policy ``config`` (a :class:`~streaming_llm.policies.PolicyConfig`).

    In a hybrid model (Gemma-3) sliding layers keep their own window and ``config`` governs the
    full-attention layers (see :class:`streaming_llm.architectures.ModelLayout`).
    """
    governed = layout.governed_layers()
    policies = dict(zip(governed, config.build_layer_policies(len(governed))))
    needs_shift = config.enable_pos_shift and any(p.needs_position_shift for p in policies.values())
    needs_rotary = any(p.needs_rotary for p in policies.values())
    strategies = layout.position_strategies() if needs_shift or needs_rotary else None
    layers = []
    for i in range(layout.num_layers):
        if i not in policies:
            layers.append(_own_window_layer(layout, i))
            continue
        policy, strategy = policies[i], strategies[i] if strategies else None
        if policy.needs_rotary:
            policy.bind_rotary(strategy)
        shift = strategy if needs_shift and strategy.rotates_keys else None
        layers.append(BoundedLayer(policy, shift, layout.layer_types[i]))
    return layers


class BoundedLayer(CacheLayerMixin):
    """One decoder layer's bounded KV storage, delegating the choice of slots to a policy."""

    is_compileable = False
    #: the external memory tier (:class:`streaming_llm.memory.LayerMemory`), attached by
    #: ``streaming_llm.memory.attach_memory``; it receives the slots :meth:`_keep` drops
    memory = None

    def __init__(self, policy: LayerPolicy, position_strategy: PositionStrategy | None = None,
                 layer_type: str = "full_attention", is_sliding: bool = False):
        super().__init__()
        self.policy = policy
        self.position_strategy = position_strategy
        self.layer_type = layer_type
        # transformers sizes the sliding-window mask from the first layer flagged sliding (Gemma-3's
        # own-window layers); such a layer keeps the newest tokens, like DynamicSlidingWindowLayer.
        self.is_sliding = is_sliding
        self.seen_tokens = 0
        self.positions = torch.empty(0, 0, dtype=torch.long)  # (H_kv, T) on CPU: original positions
        self.returned_bias: torch.Tensor | None = None  # logit bias (H_kv, n) for those slots
        self._pending_view: SlotView | None = None  # set while an attention-scored step awaits its attention
        policy.attach(self)

    # -- transformers protocol -------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.shape[0] != 1:
            raise ValueError(
                f"BoundedCache supports batch size 1 only (got batch size {key_states.shape[0]}): "
                "slot selection and positions are tracked per stream. Run one stream per cache."
            )
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.positions = torch.empty(key_states.shape[1], 0, dtype=torch.long)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(
                f"batch size changed from {self.keys.shape[0]} to {key_states.shape[0]}; call reset() first"
            )
        if self._pending_view is not None:
            raise RuntimeError(
                "this cache's policy scores slots by attention, but the last step's attention never reached it: "
                "the model is not using the streaming_llm attention hook. Build the cache with make_cache()/enable_*() "
                "and do not change the model's attention implementation while using it."
            )
        stored, start, q = self.num_slots, self.seen_tokens, key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        new_positions = torch.arange(start, start + q).expand(self.positions.shape[0], q)
        self.positions = torch.cat([self.positions, new_positions], dim=-1)
        self.seen_tokens += q

        keys_out, values_out = self._keys_for_attention(first_position=start - stored), self.values
        view = SlotView(self.positions, self.seen_tokens, q, self.keys, self.values)
        # the bias must describe the returned slots, before the policy replaces them
        self.returned_bias = self.policy.logit_bias(view) if self.policy.needs_logit_bias else None
        if self.policy.needs_attention:
            self._pending_view = view  # selection happens in after_attention()
        else:
            self._keep(self.policy.select(view))
        return keys_out, values_out

    def get_mask_sizes(self, query_length: "int | torch.Tensor") -> tuple[int, int]:
        return self.num_slots + compat.query_length(query_length), self.seen_tokens - self.num_slots

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        bound = self.policy.max_slots()
        return -1 if bound is None else bound

    def get_max_cache_shape(self) -> int:
        # The name of get_max_length before transformers 5.13 (abstract there, removed by 5.20).
        return self.get_max_length()

    def reset(self) -> None:
        self.keys = self.values = self.returned_bias = self._pending_view = None
        self.is_initialized = False
        self.seen_tokens = 0
        self.positions = torch.empty(0, 0, dtype=torch.long)
        if self.memory is not None:
            self.memory.reset()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("BoundedCache cannot be cropped: evicted tokens are gone")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("BoundedCache supports batch size 1 only (no beam search)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise NotImplementedError("BoundedCache supports batch size 1 only (no beam search / num_return_sequences)")

    # -- the attention hook's side ---------------------------------------------------------
    def attention_bias(self) -> torch.Tensor | None:
        """Logit bias ``(H_kv, n)`` for the slots the last update returned, or ``None``."""
        return self.returned_bias

    def recall(self, query: torch.Tensor, active_slots: int, current_keys: torch.Tensor | None = None):
        """Recalled ``(keys, values)`` ``(1, H_kv, R, D)`` for this forward's ``query`` (and its
        own keys ``current_keys``, the last ``q`` of the returned slots) from the memory tier, or
        ``None`` (no memory, nothing recallable)."""
        return None if self.memory is None else self.memory.recall(self, query, active_slots, current_keys)

    def after_attention(self, probs: torch.Tensor) -> None:
        """Called by the attention hook with this step's probabilities ``(B, H_q, q, n)``."""
        view, self._pending_view = self._pending_view, None
        if view is not None:
            self._keep(self.policy.observe(probs, view))

    # -- our own API -----------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return int(self.positions.shape[-1])

    def cache_bytes(self) -> int:
        """Bytes held by this layer: K and V tensors, per-slot positions and the policy's own state."""
        if not self.is_initialized:
            return 0
        kv = self.policy.stored_bytes()
        if kv is None:
            kv = self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()
        recall = 0 if self.memory is None else self.memory.active_bytes()  # recall slots are active too
        return kv + self.positions.numel() * POSITION_BYTES + self.policy.state_bytes() + recall

    def end_step(self) -> None:
        """The policy's end-of-step selection (see :meth:`LayerPolicy.end_step`)."""
        self._keep(self.policy.end_step())

    def _keep(self, keep: "torch.Tensor | SlotRewrite | None") -> None:
        """Keep slots ``keep``: ``(T',)`` in every head, ``(H_kv, T')`` per head, or new slots."""
        if keep is None:
            return
        if self.memory is not None:
            self.memory.offload(self, keep)  # evicted is not gone: the dropped slots go to the passive store
        if isinstance(keep, SlotRewrite):
            self.keys, self.values, self.positions = keep.keys, keep.values, keep.positions
            return
        if keep.dim() == 1:
            index = keep.to(self.keys.device)
            self.keys = self.keys.index_select(-2, index)
            self.values = self.values.index_select(-2, index)
            self.positions = self.positions.index_select(-1, keep.cpu())
            return
        index = keep.to(self.keys.device)[None, :, :, None]
        self.keys = self.keys.gather(-2, index.expand(*self.keys.shape[:2], -1, self.keys.shape[-1]))
        self.values = self.values.gather(-2, index.expand(*self.values.shape[:2], -1, self.values.shape[-1]))
        self.positions = self.positions.gather(-1, keep.cpu())

    def _keys_for_attention(self, first_position: int) -> torch.Tensor:
        """Keys with slot ``j`` presented at position ``first_position + j`` (position shift)."""
        if self.position_strategy is None:
            return self.keys
        target = torch.arange(first_position, first_position + self.num_slots)
        delta = target - self.positions  # (H_kv, T)
        moved = torch.nonzero(delta.any(dim=0)).flatten()
        if moved.numel() == 0:
            return self.keys
        # Policies keep the shifted slots (sinks, scored or compressed slots) before a contiguous
        # recent window, so rotating the prefix up to the last moved slot covers them all.
        end = int(moved[-1]) + 1
        shifted = self.position_strategy.shift_keys(self.keys[..., :end, :], delta[:, :end])
        return torch.cat([shifted, self.keys[..., end:, :]], dim=-2)


@dataclass(frozen=True)
class HighWater:
    """The largest cache seen at the end of a forward step since the stream began: slots of the
    fullest layer, bytes of all layers together, and bytes per layer type."""

    slots: int = 0
    bytes: int = 0
    bytes_by_layer_type: dict[str, int] = field(default_factory=dict)


class BoundedCache(Cache):
    """A ``transformers.Cache`` with one :class:`BoundedLayer` per decoder layer.

    Build it with :func:`streaming_llm.make_cache`, an ``enable_*`` function or
    :meth:`from_model`; pass it as ``cache`` (transformers >= 5.24) or ``past_key_values`` to
    ``model(...)`` or ``model.generate(...)``.
    """

    def __init__(self, layers: list[BoundedLayer], policy_name: str = "", config=None):
        super().__init__(layers=layers)
        self.policy_name = policy_name
        self.config = config
        self.max_positions: int | None = None  # learned positions of the model (see input_positions)
        self._session: Session | None = None
        # the layers with end-of-step work, found once (most policies have none)
        self._cross_layer = [layer for layer in layers if type(layer.policy).end_step is not LayerPolicy.end_step]
        self._last_layer = -1  # layer updated last in the open step; -1: no step open
        self._high_water = HighWater()

    @classmethod
    def from_model(cls, model: torch.nn.Module, config) -> "BoundedCache":
        """A fresh cache for ``model`` following a validated policy ``config``, with its session
        open on ``model`` (attention implementation and hooks as the policy needs)."""
        layout = describe_model(model)
        return cls(build_layers(config, layout), policy_name=config.name, config=config).attach(model, layout)

    # -- the model side --------------------------------------------------------------------
    @property
    def needs_attention_hook(self) -> bool:
        """Whether some layer's policy needs the attention hook (scores or logit biases)."""
        return any(layer.policy.needs_attention or layer.policy.needs_logit_bias or layer.memory is not None
                   for layer in self.layers)

    def attach(self, model: torch.nn.Module, layout: ModelLayout | None = None) -> "BoundedCache":
        """Open the :class:`~streaming_llm.session.Session` that installs on ``model`` what this
        cache needs (done by :meth:`from_model`); :meth:`disable` closes it. Returns the cache."""
        if self._session is not None:
            raise RuntimeError("this cache is already attached to a model; call disable() first")
        layout = layout or describe_model(model)
        prepare = getattr(self.config, "prepare_cache", None)  # e.g. the memory tier joins its stores to the layers
        if prepare is not None:
            prepare(self, layout)
        self._session = Session(model, self, layout).open()
        return self

    def refresh_session(self) -> None:
        """Install what the cache needs now (e.g. after custom compressors that bias logits)."""
        if self._session is not None:
            self._session.sync()

    def input_positions(self, query_length: int) -> torch.Tensor:
        """``(1, q)`` positions of the next chunk: its indices inside the cache, after the stored slots."""
        stored = max(self.cache_tokens())
        if self.max_positions is not None and stored + query_length > self.max_positions:
            raise ValueError(
                f"the model has {self.max_positions} learned positions, but {stored} stored slots + a chunk of "
                f"{query_length} need {stored + query_length}: keep the cache budget plus the chunk within "
                f"{self.max_positions}"
            )
        return torch.arange(stored, stored + query_length)[None]

    def disable(self) -> None:
        """Give the model back what this cache's session installed: its attention implementation,
        its hooks. Do not use the cache on the model afterwards."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> "BoundedCache":
        return self

    def __exit__(self, *exc) -> None:
        self.disable()

    # -- steps -----------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx <= self._last_layer:
            # a new step began and nothing ended the last one (the call did not go through the
            # model the session hooks, e.g. a submodule): end it now, before this layer stores more
            self.end_step()
        self._last_layer = layer_idx
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def end_step(self) -> None:
        """End the forward step: the policies' work across layers, then the high-water marks.

        The session calls it after every model call that carries this cache (``generate()`` and
        hand-written loops alike); it does nothing when no layer was updated since the last call.
        """
        if self._last_layer < 0:
            return
        self._last_layer = -1
        for layer in self._cross_layer:
            layer.end_step()
        self._note_high_water()

    def _note_high_water(self) -> None:
        # from tensor shapes, so no device sync (a policy's own stored_bytes() must not sync either)
        mark = self._high_water
        by_type = self.cache_bytes_by_layer_type()
        self._high_water = HighWater(
            max(mark.slots, max(self.cache_tokens(), default=0)),
            max(mark.bytes, sum(by_type.values())),
            {t: max(b, mark.bytes_by_layer_type.get(t, 0)) for t, b in by_type.items()},
        )

    @property
    def high_water(self) -> HighWater:
        """The largest cache at the end of any step of this stream (see :class:`HighWater`)."""
        return self._high_water

    def reset(self) -> None:
        super().reset()
        self._last_layer = -1
        self._high_water = HighWater()

    # -- sizes and counters ----------------------------------------------------------------
    def cache_tokens(self, layer_idx: int | None = None) -> int | list[int]:
        """Slots stored in ``layer_idx``, or a list over layers when ``layer_idx`` is None."""
        if layer_idx is not None:
            return self.layers[layer_idx].num_slots
        return [layer.num_slots for layer in self.layers]

    def cache_bytes(self, layer_idx: int | None = None) -> int:
        """Bytes held by ``layer_idx``, or by all layers together when ``layer_idx`` is None."""
        if layer_idx is not None:
            return self.layers[layer_idx].cache_bytes()
        return sum(layer.cache_bytes() for layer in self.layers)

    def cache_bytes_by_layer_type(self) -> dict[str, int]:
        """Bytes held per layer type (``full_attention``, ``sliding_attention``), e.g. Gemma-3's
        policy-governed global layers against its own-window sliding layers."""
        totals: dict[str, int] = {}
        for layer in self.layers:
            totals[layer.layer_type] = totals.get(layer.layer_type, 0) + layer.cache_bytes()
        return totals

    def policy_stats(self) -> dict[str, float]:
        """The policies' counters (e.g. keys read by sparse attention), summed over layers."""
        totals: dict[str, float] = {}
        for layer in self.layers:
            memory = {} if layer.memory is None else {f"memory_{k}": v for k, v in layer.memory.stats().items()}
            for key, value in {**layer.policy.stats(), **memory}.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def passive_bytes(self) -> int:
        """Bytes of the memory tier's passive stores (not in :meth:`cache_bytes`; 0 without memory)."""
        return sum(layer.memory.passive_bytes() for layer in self.layers if layer.memory is not None)

    @property
    def stats(self) -> dict[str, float]:
        """:meth:`policy_stats` plus ``tokens_seen``, the current ``slots`` (fullest layer) and
        ``bytes`` (all layers), and their high-water marks ``slots_max`` and ``bytes_max``."""
        return {
            **self.policy_stats(),
            "tokens_seen": self.get_seq_length(),
            "slots": max(self.cache_tokens(), default=0),
            "slots_max": self._high_water.slots,
            "bytes": self.cache_bytes(),
            "bytes_max": self._high_water.bytes,
        }

    def max_slots(self) -> int | None:
        """Per-layer slot budget after any update (``None`` = unbounded)."""
        bounds = [layer.policy.max_slots() for layer in self.layers]
        return None if any(b is None for b in bounds) else max(bounds)

    def __repr__(self) -> str:
        return f"BoundedCache(policy={self.policy_name!r}, layers={len(self.layers)}, config={self.config})"
