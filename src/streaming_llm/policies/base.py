"""The policy protocol: a validated config dataclass plus a per-layer selection rule.

The per-layer side (:class:`SlotView`, :class:`LayerPolicy`, ...) lives in
:mod:`streaming_llm.protocol`, shared with the cache; it is re-exported here.

Adding a policy = one file with a ``PolicyConfig`` subclass and a ``LayerPolicy`` subclass,
plus one line in ``streaming_llm.policies.REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..protocol import POSITION_BYTES, KeepLast, LayerPolicy, SlotRewrite, SlotView

from ..checks import check_int  # re-exported: policies import it from here

__all__ = ["POSITION_BYTES", "KeepLast", "LayerPolicy", "PolicyConfig", "SlotRewrite", "SlotView", "check_int"]


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


#: number types -> (Python types accepted as input, wording for errors). Floats are not accepted
#: for ints: 2.5 tokens is a mistake, not something to round silently.
_NUMBERS = {int: ((int, str), "an integer"), float: ((int, float, str), "a number")}


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Convert ``value`` (possibly a CLI string) to ``annotation``; raise a ValueError naming ``name``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = options[0]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{name} must be a bool (true/false); got {value!r}")
    if annotation in _NUMBERS:
        accepted, label = _NUMBERS[annotation]
        try:
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise ValueError
            return annotation(value)
        except ValueError:
            raise ValueError(f"{name} must be {label}; got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string; got {value!r}")
        return value
    return value


@dataclass
class PolicyConfig:
    """Base of every policy config.

    Subclasses are dataclasses whose fields are the policy's hyperparameters; ``validate()``
    raises ``ValueError`` naming the parameter and its allowed values.
    """

    #: Re-rotate cached keys so attention distances are measured inside the cache
    #: (StreamingLLM's position shift). Only matters for policies that keep non-contiguous slots.
    enable_pos_shift: bool = True

    name: ClassVar[str] = ""

    # What the orchestration (sizing, reports, the CLI, grids) asks a policy instead of naming it:
    #: Whether the cache stays within a budget. Unbounded policies (the full cache) are never
    #: sized to a byte target; reports take them as the reference the bounded ones close the gap to.
    bounded: ClassVar[bool] = True
    #: Fields that set the policy's memory: tables always show them.
    size_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields that tell runs apart in a legend, in order, with their short names ("" = value alone).
    label_fields: ClassVar[dict[str, str]] = {}
    #: Whether every layer and KV head evicts the same positions (no per-layer scores), so that a
    #: memory block holds the same tokens in every layer (``memory_guide_layers`` needs it).
    evicts_alike_in_every_layer: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            annotation = self._field_types()[field.name]
            if typing.get_origin(annotation) is Literal:
                _coerce(field.name, annotation, value)
            elif annotation is bool and not isinstance(value, bool):
                raise ValueError(f"{field.name} must be a bool; got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Check value ranges; subclasses extend this."""

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "PolicyConfig":
        """Build from a dict of (possibly string) values; unknown names raise ``ValueError``."""
        allowed = cls.parameter_names()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for policy {cls.name!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        types_ = cls._field_types()
        return cls(**{k: _coerce(k, types_[k], v) for k, v in params.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any]]:
        """(name, type, default) of every parameter, for ``list_policies`` and the CLI help."""
        types_ = cls._field_types()
        return [(f.name, _type_name(types_[f.name]), f.default) for f in dataclasses.fields(cls)]

    @classmethod
    def non_default(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` without those at their default value, compared as JSON (a stored list equals a
        default tuple); names the policy does not know are kept."""
        defaults = _defaults_as_json(cls)
        return {k: v for k, v in params.items() if k not in defaults or _as_json(v) != defaults[k]}

    @classmethod
    def table_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a table row shows: the sizing and legend ones, and every known one that
        differs from the default, so two runs that differ never read alike (all are in the records)."""
        always = {*cls.size_fields, *cls.label_fields}
        differing = cls.non_default(params).keys() & _defaults_as_json(cls).keys()
        return {k: v for k, v in params.items() if k in always or k in differing}

    @classmethod
    def legend(cls, params: dict[str, Any]) -> str:
        """Short label of a run with ``params``: the name and the :attr:`label_fields`."""
        detail = ",".join(f"{short}={params[k]}" if short else str(params[k])
                          for k, short in cls.label_fields.items() if k in params)
        return f"{cls.name} {detail}".strip()

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        raise NotImplementedError

    def sized(self, slots: int) -> "PolicyConfig":
        """A copy holding at most ``slots`` slots per layer (on average over layers), for
        comparisons at equal memory. Unbounded policies raise ``ValueError``."""
        raise ValueError(f"policy {self.name!r} has no budget to size")

    def sized_to_bytes(self, geometry, layer_bytes: int) -> "PolicyConfig":
        """A copy holding at most ``layer_bytes`` per layer, ``geometry`` a
        :class:`streaming_llm.sizing.KVGeometry`. Policies whose slots all cost the same divide;
        others (ADMS: compressed slots are cheaper) override."""
        slots = layer_bytes // geometry.bytes_per_slot(self)
        if slots < 1:
            raise ValueError(f"{layer_bytes} bytes per layer is less than one slot for policy {self.name!r}")
        return self.sized(slots)

    def max_cache_bytes(self, geometry) -> int:
        """Most bytes a whole cache holds (all layers), from the layers' slot budgets."""
        budgets = [policy.max_slots() for policy in self.build_layer_policies(geometry.num_layers)]
        if any(b is None for b in budgets):
            raise ValueError(f"policy {self.name!r} is unbounded: it has no memory to match")
        return sum(budgets) * geometry.bytes_per_slot(self)

    def state_bytes_per_slot(self, num_kv_heads: int) -> int:
        """Bytes of policy state per stored slot (scores, window rows), to size at equal memory."""
        return 0

    def cache_class(self) -> type:
        """The ``BoundedCache`` subclass built for this policy (ADMS adds its compressors API)."""
        from ..cache import BoundedCache

        return BoundedCache

    def build_layer_policies(self, num_layers: int) -> list[LayerPolicy]:
        """Fresh per-layer policies for one cache; override when layers share state."""
        return [self.build_layer_policy(i, num_layers) for i in range(num_layers)]


@functools.cache
def _defaults_as_json(config_class: type[PolicyConfig]) -> dict[str, str]:
    """Each default parameter of ``config_class`` as JSON, built once: a job's key is read for every
    unit, several times, and a default config validates (a memory wrapper builds its layer rule)."""
    return {k: _as_json(v) for k, v in config_class().to_dict().items()}


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
