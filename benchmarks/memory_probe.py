"""Probe (issue 16): does a memory variant recall the passkey's block, and does the model answer?

One passkey prompt (SmolLM2-135M, builtin:BOOK haystack, depth 0.5, seed 0), streaming 4+252 plus
4 recalled blocks of 64. For each (summary, representatives, aggregation, score_queries) it prints
the answer and the share of (layer, KV head) selections of the last prefill chunk that hold the
needle's block. ``aggregation`` swaps the block-score reduction over queries: ``softmax`` (the
shipped one, see streaming_llm.memory.summaries), ``mean`` of raw logits (the first version), ``max``.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/memory_probe.py 4096 pioneer-days
"""
import torch, sys
from streaming_llm.models import load_model
from streaming_llm import make_cache
from streaming_llm.memory.layer import LayerMemory
from streaming_llm.memory import summaries as S
from streaming_llm.tasks.synthetic import SyntheticTaskConfig, build_sample
from streaming_llm.tasks.prompting import PromptFormat
from streaming_llm.data import load_text
from streaming_llm.tasks.runner import greedy_generate, DecodeConfig, stop_token_ids
torch.set_num_threads(1)
m, tok = load_model("smollm2-135m")
L = int(sys.argv[1]); book = sys.argv[2]
hay = tok(load_text("builtin:"+book), add_special_tokens=False)["input_ids"]
s = build_sample(SyntheticTaskConfig(task="passkey", haystack="builtin:"+book), tok, hay, length=L, depth=0.5, sample=0, seed=0, prompt_format=PromptFormat(tok))
lo, hi = s.needle_start, s.needle_start + len(s.needle.ids)
print("answer", s.answers, "needle at", lo, hi)
def agg(dots, how):
    if how == "mean": return dots.mean(1)
    if how == "softmax": return torch.softmax(dots / 8.0, dim=-1).sum(1)
    if how == "max": return dots.amax(1)
def rep_score(self, summaries, queries):
    return agg(torch.einsum("hqd,nhrd->hqnr", queries.float(), summaries.float()).amax(-1), HOW)
def mm_score(self, summaries, queries):
    q = queries.float(); low, high = summaries[:, :, 0].float(), summaries[:, :, 1].float()
    return agg(torch.einsum("hqd,nhd->hqn", q.clamp(min=0), high) + torch.einsum("hqd,nhd->hqn", q.clamp(max=0), low), HOW)
S.RepresentativeKeys.score = rep_score; S.MinMaxBounds.score = mm_score
orig_select = LayerMemory._select
ranks = []
def spy(self, queries, first, available):
    sel = orig_select(self, queries, first, available)
    if queries.shape[-2] > 1 and self.store.recallable(10**9) and self.kv_heads:
        has = [i for i in range(available) if bool(((self.store.positions[i] >= lo) & (self.store.positions[i] < hi)).any())]
        if has:
            ranks.append(float((sel == has[0]).any(-1).float().mean()))
    return sel
LayerMemory._select = spy
for summary, reps, how, sq in [("representative", 4, "softmax", 64), ("representative", 64, "softmax", 64), ("minmax", 4, "softmax", 64), ("representative", 64, "mean", 64), ("representative", 4, "softmax", 16)]:
    HOW = how; ranks.clear()
    cache = make_cache(m, "streaming", start_size=4, recent_size=252, memory={"block_size": 64, "recall_blocks": 4, "summary": summary, "representatives": reps, "placement": "ordered", "score_queries": sq})
    g = greedy_generate(m, cache, s.prompt_ids, DecodeConfig(256, 10), stop_token_ids(tok))
    print(summary, reps, how, sq, repr(tok.decode(g.tokens)), "needle-block-in-selection share at last chunk", sum(ranks[-30:])/30, flush=True)
    cache.disable()
