"""Every supported architecture family on a tiny random model: ``full`` reproduces the plain model,
``streaming`` equals recomputation at in-cache positions, ``generate()`` runs far past the window,
ADMS stays within budget; unsupported models fail clearly.

Families differ in where positions enter: RoPE rotates keys (the cache re-rotates them), ALiBi
adds a bias over the returned slots (MPT: in-cache by construction), learned absolute positions
are added to the input (the cache feeds new tokens their in-cache index).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MptConfig,
    MptForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.cache_utils import Cache, DynamicLayer

from conftest import tiny_model
from streaming_llm import UnsupportedModelError, cache_from_config, make_cache, make_policy_config
from streaming_llm.attention import attention_hook
from streaming_llm.sizing import KVGeometry, size_to_bytes
from streaming_llm import compat
from streaming_llm.compat import cache_kwargs

TOL = 1e-4
SINK, RECENT = 4, 16
LEARNED_POSITIONS = 64  # small on purpose: every stream below runs past it
GEMMA_WINDOW = 8


def _rope(theta: float = 10000.0, **extra) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **extra}}


def _gemma3(layers: int, **kw):
    types = ["sliding_attention", "full_attention"] if layers == 2 else ["full_attention"]
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=GEMMA_WINDOW, layer_types=types, **kw))


#: family -> (build(num_layers), how positions enter). Configs: hidden 64, 4 heads, vocab 256.
ARCHITECTURES = {
    "llama": (lambda n: tiny_model("llama", num_hidden_layers=n), "rope"),
    "mistral": (lambda n: tiny_model("mistral", num_hidden_layers=n), "rope"),
    "qwen2": (lambda n: tiny_model("qwen2", num_hidden_layers=n), "rope"),
    # Qwen2 with sliding layers above max_window_layers: hybrid, detected from config.layer_types
    "qwen2-hybrid": (lambda n: tiny_model("qwen2", num_hidden_layers=n, use_sliding_window=True,
                                          sliding_window=GEMMA_WINDOW, max_window_layers=1), "rope"),
    # local layers rope_theta 1e4, global 1e6 (Gemma-3's defaults): each layer re-rotates with its own
    "gemma3": (_gemma3, "rope"),
    "gpt_neox": (lambda n: GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=n, num_attention_heads=4,
        **_rope(partial_rotary_factor=0.25))), "rope"),
    "phi": (lambda n: PhiForCausalLM(PhiConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=n, num_attention_heads=4,
        **_rope(partial_rotary_factor=0.5))), "rope"),
    "falcon": (lambda n: FalconForCausalLM(FalconConfig(  # multi-query: one KV head
        vocab_size=256, hidden_size=64, num_hidden_layers=n, num_attention_heads=4, alibi=False)), "rope"),
    "falcon-new-arch": (lambda n: FalconForCausalLM(FalconConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=n, num_attention_heads=4, alibi=False,
        new_decoder_architecture=True, num_kv_heads=2)), "rope"),
    "mpt": (lambda n: MptForCausalLM(MptConfig(vocab_size=256, d_model=64, n_heads=4, n_layers=n, max_seq_len=512)),
            "alibi"),
    "opt": (lambda n: OPTForCausalLM(OPTConfig(
        vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=n, num_attention_heads=4,
        max_position_embeddings=LEARNED_POSITIONS, word_embed_proj_dim=64)), "learned"),
    "gpt2": (lambda n: GPT2LMHeadModel(GPT2Config(
        vocab_size=256, n_embd=64, n_layer=n, n_head=4, n_positions=LEARNED_POSITIONS)), "learned"),
}
NAMES = sorted(ARCHITECTURES)


def build(name: str, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES[name][0](layers).eval()


@pytest.fixture(scope="module")
def stream():
    return torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(7))


def _kept(t: int) -> list[int]:
    """Tokens StreamingLLM holds when token ``t`` arrives (token by token)."""
    return list(range(min(SINK, t))) + list(range(max(SINK, t - RECENT), t))


# --- full == the plain model --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [1, 7])
def test_full_reproduces_plain_logits(name, chunk, stream):
    model, ids = build(name), stream[:, :60]
    cache = make_cache(model, "full")
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0]
        got = torch.cat([model(input_ids=ids[:, s : s + chunk], **cache_kwargs(model, cache), use_cache=True).logits[0]
                         for s in range(0, ids.shape[1], chunk)])
    assert (got - expected).abs().max().item() < TOL


# --- streaming == recomputation at in-cache positions -------------------------------------------

@pytest.mark.parametrize("name", [n for n in NAMES if n != "qwen2-hybrid"])  # one layer cannot be hybrid
def test_streaming_one_layer_equals_fresh_forward(name, stream):
    """With one layer a token's K/V depend on the token (and its input position) alone, so the
    cached stream is literally a fresh forward over [sinks + window + current]. RoPE and ALiBi
    see the kept tokens at contiguous positions; learned positions stay where each token was
    inserted (its index in the cache then), the current token at its index now."""
    model, kind = build(name, layers=1), ARCHITECTURES[name][1]
    cache = make_cache(model, "streaming", start_size=SINK, recent_size=RECENT)
    ids, worst = stream[0, :120], 0.0
    with torch.no_grad():
        for t in range(ids.shape[0]):
            got = model(input_ids=ids[None, t : t + 1], **cache_kwargs(model, cache), use_cache=True).logits[0, -1]
            kept = _kept(t)
            extra = {}
            if kind == "learned":
                extra["position_ids"] = torch.tensor([[len(_kept(k)) for k in kept] + [len(kept)]])
            fresh = model(input_ids=ids[None, kept + [t]], **extra).logits[0, -1]
            worst = max(worst, (got - fresh).abs().max().item())
    assert worst < TOL


class _NaiveLayer(DynamicLayer):
    """Keeps keys without their rotation; every step rotates the kept keys so they end right
    before the query (through the model's own rotary module), then evicts sinks + window."""

    def __init__(self, owner: "NaiveReference", layer_type: str, sink: int, recent: int):
        super().__init__()
        self.owner, self.layer_type, self.sink, self.recent = owner, layer_type, sink, recent
        self.is_sliding = layer_type == "sliding_attention"

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        start, m, q = self.owner.query_start, self.keys.shape[-2], key_states.shape[-2]
        raw = self.owner.rotate(key_states, torch.arange(start, start + q), self.layer_type, inverse=True)
        self.keys = torch.cat([self.keys, raw], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        keys_out = self.owner.rotate(self.keys, torch.arange(start - m, start + q), self.layer_type)
        values_out, total = self.values, self.keys.shape[-2]
        if total > self.sink + self.recent:
            keep = list(range(self.sink)) + list(range(total - self.recent, total))
            self.keys, self.values = self.keys[..., keep, :], self.values[..., keep, :]
        return keys_out, values_out

    def get_seq_length(self) -> int:
        # Every layer reports the policy layers' count, as BoundedLayer reports tokens seen: transformers
        # places the queries there (5.24: per layer; before 5.4: at layer 0's count via cache_position).
        return self.owner.query_start

    def get_mask_sizes(self, query_length):
        q = compat.query_length(query_length)
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return stored + q, self.owner.query_start - stored  # slots end right before the queries


class NaiveReference(Cache):
    """StreamingLLM recomputed naively for any family: queries at in-cache positions
    ``m .. m + q - 1`` (``m`` = slots kept by the policy layers), fed as ``position_ids`` (RoPE,
    learned) or implied by the returned key count (ALiBi). Sliding layers of hybrid models keep
    ``window - 1`` tokens."""

    def __init__(self, model, kind: str, window: int | None = None):
        config = model.config
        types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        hybrid = len(set(types)) > 1
        bounds = [(0, window - 1) if hybrid and t == "sliding_attention" else (SINK, RECENT) for t in types]
        super().__init__(layers=[_NaiveLayer(self, t, *b) for t, b in zip(types, bounds)])
        self.kind, self.query_start = kind, 0
        self.rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
        self.policy_layer = next(i for i, t in enumerate(types) if not hybrid or t == "full_attention")

    def rotate(self, x, positions, layer_type, inverse=False):
        if self.kind != "rope":
            return x  # keys carry no rotation
        args = (layer_type,) if hasattr(self.rotary, "layer_types") else ()  # Gemma-3: one RoPE per layer type
        cos, sin = self.rotary(x, positions[None], *args)
        cos, sin = cos[:, None], -sin[:, None] if inverse else sin[:, None]
        d = cos.shape[-1]
        rot, rest = x[..., :d], x[..., d:]
        half = torch.cat((-rot[..., d // 2 :], rot[..., : d // 2]), dim=-1)
        return torch.cat((rot * cos + half * sin, rest), dim=-1)

    @torch.no_grad()
    def step(self, model, input_ids):
        layer = self.layers[self.policy_layer]
        self.query_start = layer.keys.shape[-2] if layer.is_initialized else 0
        q = input_ids.shape[1]
        extra = {} if self.kind == "alibi" else {"position_ids": torch.arange(self.query_start, self.query_start + q)[None]}
        return model(input_ids=input_ids, **cache_kwargs(model, self), use_cache=True, **extra).logits[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [1, 5])
def test_streaming_matches_naive_reference(name, chunk, stream):
    model, kind = build(name), ARCHITECTURES[name][1]
    ours = make_cache(model, "streaming", start_size=SINK, recent_size=RECENT)
    naive = NaiveReference(model, kind, getattr(model.config, "sliding_window", None))
    ids, worst = stream[:, :150], 0.0
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            got = model(input_ids=ids[:, s : s + chunk], **cache_kwargs(model, ours), use_cache=True).logits[0]
            worst = max(worst, (got - naive.step(model, ids[:, s : s + chunk])).abs().max().item())
    assert worst < TOL


# --- generate() and ADMS ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_generate_far_past_the_window(name, stream):
    """generate() passes its own absolute position_ids; 100 new tokens after a 30-token prompt run past
    the window and past the 64 learned positions of the OPT/GPT-2 configs, with the same tokens as a
    manual loop."""
    model, prompt, new = build(name), stream[:, :30], 100
    with make_cache(model, "streaming", start_size=SINK, recent_size=RECENT) as cache:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **cache_kwargs(model, cache),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        assert max(cache.cache_tokens()) <= SINK + RECENT
    manual, step = [], prompt
    with make_cache(model, "streaming", start_size=SINK, recent_size=RECENT) as cache, torch.no_grad():
        for _ in range(new):
            step = model(input_ids=step, **cache_kwargs(model, cache), use_cache=True).logits[0, -1].argmax().view(1, 1)
            manual.append(step.item())
    assert out[0, prompt.shape[1] :].tolist() == manual


@pytest.mark.parametrize("name", NAMES)
def test_adms_stays_within_budget(name, stream):
    model = build(name)
    budget = 4 + 16 + 8
    steps = [(s, 1) for s in range(100)] + [(s, 5) for s in range(100, 150, 5)]  # token by token, then chunks
    with make_cache(model, "adms", start_size=4, recent_size=16, compressed_budget=8, compression_interval=4,
                    enable_dynamic_sink=False) as cache, torch.no_grad():
        for s, chunk in steps:
            logits = model(input_ids=stream[:, s : s + chunk], **cache_kwargs(model, cache), use_cache=True).logits
            assert torch.isfinite(logits).all()
            assert max(cache.cache_tokens()) <= budget
        assert cache.get_seq_length() == 150


# --- hybrid models ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gemma3", "qwen2-hybrid"])
def test_hybrid_sliding_layers_keep_their_own_window(name, stream):
    model = build(name)
    sliding = [t == "sliding_attention" for t in model.config.layer_types]
    with make_cache(model, "streaming", start_size=SINK, recent_size=RECENT) as cache, torch.no_grad():
        model(input_ids=stream[:, :100], **cache_kwargs(model, cache), use_cache=True)
        for layer, is_sliding in zip(cache.layers, sliding):
            assert layer.num_slots == (GEMMA_WINDOW - 1 if is_sliding else SINK + RECENT)
            assert layer.is_sliding == is_sliding
        by_type = cache.cache_bytes_by_layer_type()
        assert set(by_type) == {"sliding_attention", "full_attention"}
        assert sum(by_type.values()) == cache.cache_bytes()


def test_hybrid_sizing_leaves_the_own_window_layers_their_share(stream):
    model, target = build("gemma3"), 20_000
    config = size_to_bytes(make_policy_config("streaming", start_size=SINK), model, target)
    one_slot = KVGeometry.of(model).bytes_per_slot(config)
    with cache_from_config(model, config) as cache, torch.no_grad():
        model(input_ids=stream[:, :150], **cache_kwargs(model, cache), use_cache=True)
        assert target - one_slot < cache.cache_bytes() <= target


def test_gemma3_attention_hook_applies_the_sliding_window(stream):
    """The hook serves Gemma-3's sliding layers too (scored policies route every layer through it)."""
    model, ids = build("gemma3"), stream[:, :60]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0]
        with attention_hook(model):
            for chunk in (1, 7):
                cache = make_cache(model, "full")
                got = torch.cat([model(input_ids=ids[:, s : s + chunk], **cache_kwargs(model, cache), use_cache=True).logits[0]
                                 for s in range(0, 60, chunk)])
                assert (got - expected).abs().max().item() < TOL
    with make_cache(model, "h2o", heavy_size=8, recent_size=8) as cache:
        out = model.generate(ids[:, :20], **cache_kwargs(model, cache), max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 60


# --- what is refused ----------------------------------------------------------------------------

def test_unknown_family_raises_naming_the_supported_ones():
    model = GPTJForCausalLM(GPTJConfig(vocab_size=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)).eval()
    with pytest.raises(UnsupportedModelError, match=r"model_type 'gptj'.*Llama \(llama\).*GPT-2 \(gpt2\)"):
        make_cache(model, "streaming")
    make_cache(model, "streaming", enable_pos_shift=False)  # no re-rotation needed: allowed


def test_falcon_with_alibi_is_refused_with_the_reason():
    model = FalconForCausalLM(FalconConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           alibi=True)).eval()
    for params in ({}, {"enable_pos_shift": False}):
        with pytest.raises(UnsupportedModelError, match=r"Falcon with alibi=True.*Supported families: Llama"):
            make_cache(model, "streaming", **params)


@pytest.mark.parametrize("name", ["mpt", "falcon"])
def test_scored_policies_need_the_attention_interface(name):
    with pytest.raises(UnsupportedModelError, match="AttentionInterface"):
        make_cache(build(name), "h2o", heavy_size=8, recent_size=8)


def test_learned_positions_beyond_the_table_raise_clearly(stream):
    model = build("opt")
    cache = make_cache(model, "full")
    with torch.no_grad(), pytest.raises(ValueError, match="64 learned positions"):
        for s in range(0, 100, 10):
            model(input_ids=stream[:, s : s + 10], **cache_kwargs(model, cache), use_cache=True)


def test_learned_positions_are_given_back_on_disable(stream):
    model = build("gpt2")
    with make_cache(model, "streaming", start_size=SINK, recent_size=RECENT) as cache, torch.no_grad():
        for s in range(0, 100, 10):
            model(input_ids=stream[:, s : s + 10], **cache_kwargs(model, cache), use_cache=True)  # in-cache positions < 64
    with torch.no_grad(), pytest.raises(IndexError):  # the model's own absolute positions again: 100 > 64
        model(input_ids=stream[:, 100:101], **cache_kwargs(model, cache), use_cache=True)
