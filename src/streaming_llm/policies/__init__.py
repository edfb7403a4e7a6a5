"""Registry of cache policies: name -> config dataclass (which builds the per-layer rule)."""

from __future__ import annotations

from typing import Any

from .adms import ADMSConfig
from .atskv import ATSKVConfig
from .base import LayerPolicy, PolicyConfig, SlotRewrite, SlotView
from .dynamickv import DynamicKVConfig
from .full import FullConfig
from .h2o import H2OConfig
from .rocketkv import RocketKVConfig
from .sliding_window import SlidingWindowConfig
from .snapkv import SnapKVConfig
from .streaming import StreamingConfig, dynamic_sink_size
from .tova import TOVAConfig

REGISTRY: dict[str, type[PolicyConfig]] = {
    cls.name: cls for cls in (
        FullConfig, SlidingWindowConfig, StreamingConfig, ADMSConfig, H2OConfig, TOVAConfig, SnapKVConfig, DynamicKVConfig,
        RocketKVConfig, ATSKVConfig,
    )
}

#: Other names of registered policies: seed 003's method names (``run_experiment.py --methods``).
#: ``full``, ``sliding_window`` and ``atskv`` are registry names already. An alias resolves to its
#: policy's config class, so configs, caches and records carry the canonical name.
ALIASES: dict[str, str] = {"dynamic_kv": "dynamickv", "rocket_kv": "rocketkv"}


def list_policies() -> list[str]:
    """Names accepted by ``make_cache`` and ``streaming-llm eval --policy`` (aliases: :data:`ALIASES`)."""
    return sorted(REGISTRY)


def canonical_name(policy: str) -> str:
    """``policy`` with an alias replaced by its registry name (``"dynamic_kv+memory"`` ->
    ``"dynamickv+memory"``); anything else is returned as given, to be validated where it is used."""
    if not isinstance(policy, str):
        return policy
    base, memory = (policy[: -len("+memory")], "+memory") if policy.endswith("+memory") else (policy, "")
    return ALIASES.get(base, base) + memory


def _other_names() -> str:
    aliases = ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())
    return f"aliases {aliases}; NAME+memory adds the memory tier"


def names_help() -> str:
    """The accepted names for a command's help: the policies, then the aliases."""
    return f"{', '.join(list_policies())} ({_other_names()})"


def _unknown_policy(policy: object) -> ValueError:
    return ValueError(f"policy must be one of {', '.join(list_policies())}; got {policy!r} "
                      f"(also accepted: {_other_names()})")


def get_policy_config_class(policy: str) -> type[PolicyConfig]:
    """The config class of ``policy``; ``"<name>+memory"`` wraps ``<name>`` with the memory tier."""
    if isinstance(policy, str) and policy.endswith("+memory"):
        from ..memory import with_memory

        return with_memory(get_policy_config_class(policy[: -len("+memory")]))
    try:
        return REGISTRY[ALIASES.get(policy, policy)]
    except (KeyError, TypeError):
        raise _unknown_policy(policy) from None


def non_default_params(policy: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``policy`` without those at their default value
    (:meth:`PolicyConfig.non_default`). A job's key hashes these, so a parameter added later with a
    default leaves every earlier record's key as it was. An unknown policy's are returned whole."""
    try:
        config_class = get_policy_config_class(policy)
    except ValueError:
        return dict(params)
    return config_class.non_default(params)


def is_bounded(policy: str) -> bool:
    """Whether ``policy`` keeps its cache within a budget (the full cache does not)."""
    return get_policy_config_class(policy).bounded


def policies_on_model_attention() -> list[str]:
    """Policies that, with their defaults, need neither attention scores nor logit biases, so
    they run on a model's own attention (families that bypass transformers' AttentionInterface)."""
    def hookless(cls: type[PolicyConfig]) -> bool:
        return not any(p.needs_attention or p.needs_logit_bias for p in cls().build_layer_policies(2))

    return [name for name in list_policies() if hookless(REGISTRY[name])]


def make_policy_config(policy: str, **params) -> PolicyConfig:
    """Validated config of ``policy`` from keyword (or CLI string) values."""
    return get_policy_config_class(policy).from_params(params)


__all__ = [
    "ADMSConfig",
    "ALIASES",
    "REGISTRY",
    "SlotRewrite",
    "LayerPolicy",
    "PolicyConfig",
    "SlotView",
    "canonical_name",
    "dynamic_sink_size",
    "get_policy_config_class",
    "is_bounded",
    "list_policies",
    "make_policy_config",
    "names_help",
    "non_default_params",
    "policies_on_model_attention",
]
