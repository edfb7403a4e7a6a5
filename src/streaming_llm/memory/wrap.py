"""Wrapping a policy with memory: ``<policy>+memory`` configs and attaching the tier to a cache.

``with_memory(StreamingConfig)`` is a dataclass subclass of the policy's config with one extra
field per :class:`MemoryConfig` parameter, prefixed ``memory_`` (``memory_block_size``,
``memory_recall_blocks``, ...), registered as ``"streaming+memory"``. So everything that takes a
policy name and ``KEY=VALUE`` parameters takes memory too (``make_policy_config``, ``--policy
streaming+memory:memory_recall_blocks=4``, ``--set``, sweep grids), and records carry the memory
parameters in ``params``.

Equal memory: a wrapped config's cache bytes are its policy's plus the recall slots
(``lru_blocks * block_size`` rows per layer, K and V and a position each); sizing it to a byte
target gives the policy what the recall slots leave.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing



from ..protocol import POSITION_BYTES
from ..positions import UnsupportedModelError
from .config import MemoryConfig
from .guide import RecallGuide, parse_layer_range
from .layer import LayerMemory

SUFFIX = "+memory"
PREFIX = "memory_"


class MemoryWrapped:
    """Mixin of every ``<policy>+memory`` config (placed before the policy's config class)."""

    inner_class: typing.ClassVar[type]

    @property
    def memory(self) -> MemoryConfig:
        return MemoryConfig(**{f.name: getattr(self, PREFIX + f.name) for f in dataclasses.fields(MemoryConfig)})

    def validate(self) -> None:
        super().validate()
        memory = self.memory  # validates the memory parameters
        budget = self.build_layer_policies(1)[0].max_slots()
        if budget is None:
            raise ValueError(f"memory wraps a bounded policy; {self.inner_class.name!r} keeps every token "
                             "(nothing is ever evicted to recall)")
        if memory.block_size > budget:
            raise ValueError(f"memory_block_size={memory.block_size} is larger than the policy's budget of "
                             f"{budget} slots; allowed: 1 .. {budget}")
        if memory.guide_layers is not None and not self.inner_class.evicts_alike_in_every_layer:
            alike = sorted(name for name, cls in _registry().items() if cls.evicts_alike_in_every_layer)
            raise ValueError(f"memory_guide_layers needs block i to hold the same tokens in every layer, but "
                             f"{self.inner_class.name!r} evicts by per-layer scores; allowed with: {', '.join(alike)}")

    @staticmethod
    def recall_slot_bytes(geometry) -> int:
        """Bytes of one recall slot of one layer: K and V rows in the model's dtype plus a position, per KV head."""
        return geometry.num_kv_heads * (2 * geometry.head_dim * geometry.element_bytes + POSITION_BYTES)

    def recall_bytes(self, geometry) -> int:
        """Bytes per layer of the recall slots on the active device."""
        return self.memory.recall_slots * self.recall_slot_bytes(geometry)

    def sized_to_bytes(self, geometry, layer_bytes: int) -> "PolicyConfig":
        left = layer_bytes - self.recall_bytes(geometry)
        if left < 1:
            raise ValueError(
                f"{layer_bytes} bytes per layer do not cover the {self.recall_bytes(geometry)} bytes of the "
                f"{self.memory.recall_slots} recall slots (memory_recall_blocks x memory_block_size); "
                "recall fewer or smaller blocks"
            )
        return super().sized_to_bytes(geometry, left)

    def __reduce__(self):
        return _rebuild, (self.name, dataclasses.asdict(self))

    def prepare_cache(self, cache, layout) -> None:
        """Called by ``BoundedCache.attach`` before the session opens: give the layers their stores."""
        if all(layer.memory is None for layer in cache.layers):
            attach_memory(cache, layout)

    def max_cache_bytes(self, geometry) -> int:
        return super().max_cache_bytes(geometry) + geometry.num_layers * self.recall_bytes(geometry)


@functools.cache
def with_memory(config_class: type) -> type:
    """The ``<name>+memory`` config class wrapping ``config_class``."""
    if issubclass(config_class, MemoryWrapped):
        raise ValueError(f"policy {config_class.name!r} already has memory")
    hints = typing.get_type_hints(MemoryConfig)
    fields = [(PREFIX + f.name, hints[f.name], dataclasses.field(default=f.default))
              for f in dataclasses.fields(MemoryConfig)]
    name = f"{config_class.__name__}WithMemory"
    cls = dataclasses.make_dataclass(name, fields, bases=(MemoryWrapped, config_class),
                                     namespace={"name": config_class.name + SUFFIX, "inner_class": config_class,
                                                "__doc__": f"{config_class.name} with the memory tier: "
                                                           f"see {config_class.__name__} and MemoryConfig."})
    cls.__module__ = __name__
    return cls


def _registry() -> dict[str, type]:
    return sys.modules["streaming_llm.policies"].REGISTRY


def _rebuild(name: str, params: dict):
    """Unpickle a wrapped config (Ray workers): its class is built on demand, so rebuild by name.
    ``streaming_llm.policies`` is loaded whenever this package is (``streaming_llm`` imports it)."""
    return sys.modules["streaming_llm.policies"].make_policy_config(name, **params)


def memory_params(memory: dict | MemoryConfig | None) -> dict:
    """``memory`` (a dict of :class:`MemoryConfig` names, or one) as ``memory_*`` policy parameters."""
    if memory is None:
        return {}
    if isinstance(memory, MemoryConfig):
        memory = dataclasses.asdict(memory)
    if not isinstance(memory, dict):
        raise ValueError(f"memory must be a dict of MemoryConfig parameters or a MemoryConfig; got {memory!r}")
    allowed = [f.name for f in dataclasses.fields(MemoryConfig)]
    unknown = sorted(set(memory) - set(allowed))
    if unknown:
        raise ValueError(f"unknown memory parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return {PREFIX + key: value for key, value in memory.items()}


def attach_memory(cache, layout) -> None:
    """Give every policy-governed layer of ``cache`` its :class:`LayerMemory` (a hybrid model's
    own-window layers evict nothing worth recalling). Families whose keys carry no rotation the
    store can undo and re-apply are refused."""
    memory = cache.config.memory
    try:
        strategies = layout.position_strategies()
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"the memory tier cannot re-position this model's keys: {error}") from None
    for index in layout.governed_layers():
        if not strategies[index].rotates_keys:
            raise UnsupportedModelError(
                f"the memory tier stores keys position-free and places recalled tokens at new positions, which needs "
                f"rotary position embeddings; {layout.family.name if layout.family else 'this model'} keys carry no "
                "rotation to undo (ALiBi biases attention by distance, learned absolute positions are added to the "
                "input): use the policy without memory"
            )
        cache.layers[index].memory = LayerMemory(memory, strategies[index])
    if memory.guide_layers is not None:
        attach_guide(cache, layout, memory.guide_layers)


def attach_guide(cache, layout, guide_layers: str) -> None:
    """One :class:`RecallGuide` for ``cache``: the layers of ``guide_layers`` guide every governed layer after them."""
    first, last = parse_layer_range("memory_guide_layers", guide_layers)
    governed = list(layout.governed_layers())
    if last >= max(governed):
        raise ValueError(f"memory_guide_layers={guide_layers!r} must end before the model's last layer with memory "
                         f"(layer {max(governed)}) so that some layer follows; allowed: 0 <= FIRST <= LAST < {max(governed)}")
    RecallGuide(first, last, [index for index in governed if index > last]).attach(cache)


def passive_bytes(cache) -> int:
    """Bytes of ``cache``'s passive stores (0 without memory)."""
    return sum(layer.memory.passive_bytes() for layer in cache.layers if getattr(layer, "memory", None) is not None)


def is_memory_config(config) -> bool:
    return isinstance(config, MemoryWrapped)


