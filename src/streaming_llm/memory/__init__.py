"""The external (passive) memory tier: evicted KV, position-free, in blocks on a second device,
recalled into attention when the queries need it.

Build a cache with it: ``make_cache(model, "streaming", ..., memory={"block_size": 64, "recall_blocks": 4})``,
or name the wrapped policy ``"streaming+memory"`` with ``memory_*`` parameters (CLI, grids).
"""

from .config import MemoryConfig
from .layer import LayerMemory, evicted_rows
from .wrap import PREFIX, SUFFIX, MemoryWrapped, attach_memory, is_memory_config, memory_params, passive_bytes, with_memory

__all__ = [
    "PREFIX", "SUFFIX", "LayerMemory", "MemoryConfig", "MemoryWrapped", "attach_memory", "evicted_rows",
    "is_memory_config", "memory_params", "passive_bytes", "with_memory",
]
