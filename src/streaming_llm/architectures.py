"""Model families: how each architecture applies positions, detected once from the config.

One table maps ``config.model_type`` to a :class:`Family`; :func:`describe_model` reads the rest
from the config (RoPE type per layer type, Falcon's ALiBi switch, sliding/full layer types) and
from the model's own rotary buffers, and returns the :class:`ModelLayout` the cache is built from.
Nothing else in the package looks at ``model_type``.

How each kind of position is kept inside the cache (StreamingLLM's in-cache distances):

- ``rope``: the cache re-rotates kept keys (:class:`~streaming_llm.positions.RotateHalfRoPE`),
  with each layer's own inverse frequencies (Gemma-3 uses one base for sliding layers and another
  for global ones) and only on the rotary dims (partial rotary: GPT-NeoX/Pythia, Phi).
- ``alibi``: MPT slices its bias from the end of the returned keys, so the bias already measures
  distances among the slots the cache returns; nothing to do, keys are position-free.
- ``learned``: OPT and GPT-2 add a learned embedding of ``position_ids`` to the input. The cache
  cannot move a position that is mixed into the hidden state, so it places each *new* token at its
  index inside the cache (:mod:`streaming_llm.position_inputs`), which never exceeds the budget plus
  the chunk, and checks it against the trained table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .positions import PositionFreeKeys, PositionStrategy, RotateHalfRoPE, UnsupportedModelError

ROPE, ALIBI, LEARNED = "rope", "alibi", "learned"
FULL, SLIDING = "full_attention", "sliding_attention"

#: RoPE variants whose inverse frequencies do not depend on the sequence length, so a relative
#: re-rotation is exact. "dynamic" and "longrope" rescale with the length seen and are refused.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class Family:
    """An architecture family.

    Attributes
    ----------
    name: how errors and the README name it.
    model_types: the ``config.model_type`` values it covers.
    positions: ``rope``, ``alibi`` or ``learned`` (see the module docstring).
    attention_interface: whether its attention goes through ``transformers.AttentionInterface``,
        so policies that need attention scores (our hook) can run on it.
    refused: ``(config attribute, reason)`` pairs: a truthy attribute makes the model unsupported.
    """

    name: str
    model_types: tuple[str, ...]
    positions: str
    attention_interface: bool = True
    refused: tuple[tuple[str, str], ...] = field(default=())

    def label(self) -> str:
        return f"{self.name} ({', '.join(self.model_types)})"


FAMILIES: tuple[Family, ...] = (
    Family("Llama", ("llama",), ROPE),
    Family("Mistral", ("mistral",), ROPE),
    Family("Qwen2", ("qwen2",), ROPE),
    Family("Gemma-3", ("gemma3_text",), ROPE),
    Family("GPT-NeoX/Pythia", ("gpt_neox",), ROPE),
    Family("Phi", ("phi",), ROPE),
    Family("Falcon", ("falcon",), ROPE, attention_interface=False, refused=((
        "alibi",
        "Falcon with alibi=True builds its ALiBi bias from all tokens seen (a P+q column bias added to a "
        "mask sized from the cache), so once a token is evicted the shapes disagree; no supported input "
        "can make that bias in-cache without patching FalconModel",
    ),)),
    Family("MPT", ("mpt",), ALIBI, attention_interface=False),
    Family("OPT", ("opt",), LEARNED),
    Family("GPT-2", ("gpt2",), LEARNED),
)

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def supported_families() -> str:
    """``"Llama (llama), Mistral (mistral), ..."`` for error messages."""
    return ", ".join(family.label() for family in FAMILIES)


@dataclass(frozen=True)
class ModelLayout:
    """What the cache needs to know about a model's layers and positions.

    ``layer_types[i]`` is ``full_attention`` or ``sliding_attention``. In a hybrid model (both
    kinds, e.g. Gemma-3) sliding layers keep their own window of ``sliding_window`` tokens and the
    policy governs the full-attention layers; otherwise the policy governs every layer.
    ``strategies`` is one position strategy per layer, or ``None`` with ``unsupported`` saying why.
    """

    family: Family | None
    layer_types: tuple[str, ...]
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None = None
    max_positions: int | None = None
    strategies: tuple[PositionStrategy, ...] | None = None
    unsupported: str | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def keeps_own_window(self, layer_idx: int) -> bool:
        return self.sliding_window is not None and self.layer_types[layer_idx] == SLIDING

    def governed_layers(self) -> list[int]:
        """Indices of the layers the cache policy governs."""
        return [i for i in range(self.num_layers) if not self.keeps_own_window(i)]

    def position_strategies(self) -> tuple[PositionStrategy, ...]:
        if self.strategies is None:
            raise UnsupportedModelError(self.unsupported)
        return self.strategies

    @property
    def remaps_input_positions(self) -> bool:
        return self.family is not None and self.family.positions == LEARNED

    @property
    def routes_attention(self) -> bool:
        """False for families known not to use ``AttentionInterface`` (unknown ones are not refused)."""
        return self.family is None or self.family.attention_interface


def text_config(model: torch.nn.Module):
    config = getattr(model, "config", None)
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _num_layers(config) -> int:
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError("model.config.num_hidden_layers is missing: is this a transformers decoder model?")
    return num_layers


def _layer_types(config, num_layers: int) -> tuple[str, ...]:
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == num_layers:
        return tuple(types)
    return (FULL,) * num_layers


def _kv_shape(config) -> tuple[int, int]:
    """``(KV heads, head dim)`` of the keys the cache receives."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if getattr(config, "model_type", None) == "falcon":
        # Falcon's new decoder architecture expands its KV heads before the cache; the old one is
        # multi-query (one KV head) unless multi_query=False.
        if config.new_decoder_architecture:
            return heads, head_dim
        return (1 if config.multi_query else config.num_kv_heads), head_dim
    return (getattr(config, "num_key_value_heads", None) or heads), head_dim


def _rope_type(config, layer_type: str) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        params = params[layer_type]  # Gemma-3: one set of parameters per layer type
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def _inv_freqs(model: torch.nn.Module, layer_types: set[str]) -> dict[str, torch.Tensor]:
    """The model's own RoPE inverse frequencies per layer type, from its rotary module's buffers:
    ``<layer_type>_inv_freq`` (Gemma-3 keeps one per type) or a single ``inv_freq``."""
    found: dict[str | None, list[torch.Tensor]] = {}
    for module in model.modules():
        for name in (*layer_types, None):
            buffer = getattr(module, "inv_freq" if name is None else f"{name}_inv_freq", None)
            if isinstance(buffer, torch.Tensor):
                found.setdefault(name, []).append(buffer)
    result = {}
    for layer_type in layer_types:
        candidates = found.get(layer_type) or found.get(None) or []
        distinct = {tuple(t.flatten().tolist()) for t in candidates}
        if len(distinct) != 1:
            raise UnsupportedModelError(
                f"expected one rotary embedding for {layer_type} layers, found {len(distinct)}; "
                f"supported families: {supported_families()}"
            )
        result[layer_type] = candidates[0]
    return result


def _rope_strategies(model, config, layer_types) -> tuple[tuple[PositionStrategy, ...] | None, str | None]:
    for layer_type in sorted(set(layer_types)):
        rope_type = _rope_type(config, layer_type)
        if rope_type not in STATIC_ROPE_TYPES:
            return None, (
                f"rope_type {rope_type!r} rescales frequencies with the sequence length, so keys cannot be "
                f"re-rotated exactly; supported rope types: {', '.join(STATIC_ROPE_TYPES)} "
                "(or pass enable_pos_shift=False)"
            )
    per_type = {t: RotateHalfRoPE(freqs) for t, freqs in _inv_freqs(model, set(layer_types)).items()}
    return tuple(per_type[t] for t in layer_types), None


def describe_model(model: torch.nn.Module) -> ModelLayout:
    """The :class:`ModelLayout` of ``model``. Raises :class:`UnsupportedModelError` for models
    that cannot run on a bounded cache at all; models without a positional strategy get a layout
    whose :meth:`~ModelLayout.position_strategies` raises (they may run with ``enable_pos_shift=False``)."""
    config = text_config(model)
    num_layers = _num_layers(config)
    layer_types = _layer_types(config, num_layers)
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type)
    kv_heads, head_dim = _kv_shape(config)
    if family is None:
        return ModelLayout(None, layer_types, kv_heads, head_dim, unsupported=(
            f"position shift is not supported for model_type {model_type!r}; supported families: "
            f"{supported_families()} (or pass enable_pos_shift=False)"
        ))
    for attribute, reason in family.refused:
        if getattr(config, attribute, False):
            raise UnsupportedModelError(
                f"{family.name} with {attribute}={getattr(config, attribute)!r} is not supported: {reason}. "
                f"Supported families: {supported_families()}"
            )
    hybrid = {FULL, SLIDING} <= set(layer_types) and getattr(config, "sliding_window", None)
    sliding_window = int(config.sliding_window) if hybrid else None
    if family.positions == ROPE:
        strategies, unsupported = _rope_strategies(model, config, layer_types)
    else:
        strategies, unsupported = (PositionFreeKeys(),) * num_layers, None
    max_positions = getattr(config, "max_position_embeddings", None) if family.positions == LEARNED else None
    return ModelLayout(family, layer_types, kv_heads, head_dim, sliding_window, max_positions, strategies, unsupported)
