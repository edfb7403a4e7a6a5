"""Where an ADMS step spends its time: the share of each stage, for one configuration (seeds 002/004's
``profile_adms.py``).

Streams ``--tokens`` tokens of a shipped book through the model with an ADMS cache (``--set
key=value`` for any ADMSConfig parameter, ``--cache-bytes`` to size it) and times, per forward:

- scoring       importance of new tokens (``importance_metric``)
- selection     the precision bank's ranking, coverage included (``coverage_ranking``)
- compression   the compressor (SVD for ``low_rank``, k-means for ``vq``, pooling for ``summary``)
- replay        energy captured, residual replay and the controller's update (ADM++)
- anchoring     anchor positions and their calibration (ADM++)
- sketches      the sketch bank (ADM++ dual fidelity)
- concatenation rebuilding the mid tier and splicing the layer's tensors
- position      re-rotating kept keys for the position shift
- attention     the attention kernels (SDPA, or the hook's scores/softmax/values)
- other         the rest of the forward (projections, MLP, norms, bookkeeping)

The stage timers wrap this package's own functions for the duration of the run (nothing of
transformers is patched); ``time.perf_counter`` around each call, on CPU or after a CUDA sync.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_adms.py --tokens 1024 --chunk-size 32 \\
        --set compressed_budget=128 --set recent_size=115 --set enable_dynamic_sink=false
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import torch

from streaming_llm import make_cache
from streaming_llm import attention as attention_module
from streaming_llm.cache import BoundedLayer
from streaming_llm.compat import cache_kwargs
from streaming_llm.data import tokenize_stream
from streaming_llm.models import load_model
from streaming_llm.policies import make_policy_config
from streaming_llm.policies.adms import exact_only, importance, tiers
from streaming_llm.report import console_table
from streaming_llm.sizing import size_to_bytes

#: stage -> (owner, attribute) of the functions it times
STAGES = {
    "scoring": [(importance.TokenScorer, "__call__")],
    "selection": [(tiers, "coverage_ranking"), (exact_only, "coverage_ranking"), (tiers, "exact_budgets")],
    "compression": [(tiers.ADMSLayer, "_compress")],
    "replay": [(tiers.ADMSLayer, "_replay_and_control")],
    "anchoring": [(tiers.ADMSLayer, "_anchors")],
    "sketches": [(tiers.ADMSLayer, "_sketch_rows")],
    "concatenation": [(tiers.ADMSLayer, "_splice")],
    "position": [(BoundedLayer, "_keys_for_attention")],
    "attention": [(torch.nn.functional, "scaled_dot_product_attention"), (attention_module, "grouped_scores"),
                  (attention_module, "grouped_values"), (attention_module.F, "scaled_dot_product_attention")],
}


class StageTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0  # only the outermost timed call counts (stages nest, e.g. selection in replay)

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            if self.depth:
                return function(*args, **kwargs)
            self.depth += 1
            self._sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[stage] += time.perf_counter() - start
                self.depth -= 1
        return timed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def timed_stages(timer: StageTimer):
    saved = []
    try:
        for stage, places in STAGES.items():
            for owner, name in places:
                original = getattr(owner, name)
                if any(o is owner and n == name for o, n, _ in saved):
                    continue
                saved.append((owner, name, original))
                setattr(owner, name, timer.wrap(stage, original))
        yield timer
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@torch.no_grad()
def profile(model, ids: torch.Tensor, params: dict, chunk_size: int, cache_bytes: int | None) -> tuple[dict, float, int]:
    config = make_policy_config("adms", **params)
    if cache_bytes is not None:
        config = size_to_bytes(config, model, cache_bytes)
    cache = make_cache(model, "adms", **config.to_dict())
    timer = StageTimer(ids.device)
    steps = 0
    with cache, timed_stages(timer):
        start = time.perf_counter()
        for t in range(0, ids.shape[1], chunk_size):
            model(input_ids=ids[:, t:t + chunk_size], **cache_kwargs(model, cache), use_cache=True)
            steps += 1
        timer._sync()
        total = time.perf_counter() - start
    return dict(timer.seconds), total, steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default="builtin:pioneer-days")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--cache-bytes", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an ADMSConfig parameter")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    params = dict(item.split("=", 1) for item in args.set)
    model, tokenizer = load_model(args.model, device=args.device)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenize_stream(tokenizer, text=args.text, num_tokens=args.tokens)], device=device)
    seconds, total, steps = profile(model, ids, params, args.chunk_size, args.cache_bytes)
    seconds["other"] = total - sum(seconds.values())
    rows = [{"stage": stage, "ms per forward": round(1e3 * seconds.get(stage, 0.0) / steps, 2),
             "% of time": round(100 * seconds.get(stage, 0.0) / total, 1)} for stage in [*STAGES, "other"]]
    print(f"ADMS {params or 'defaults'}: {steps} forwards of {args.chunk_size} tokens, {ids.shape[1] / total:.1f} tok/s")
    print(console_table(rows, ["stage", "ms per forward", "% of time"]))


if __name__ == "__main__":
    main()
