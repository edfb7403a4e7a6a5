"""ATSKV's per-token, per-layer features ``[h; a; f]`` (seed 003), computed the same way when the
predictor is trained on full-cache runs (:mod:`.train`) and when the policy scores its slots.

- ``h``: the layer's input to attention (the hidden state after its input norm), projected to
  :data:`HIDDEN_DIMS` dimensions by a fixed Gaussian matrix. Why a random projection: it costs
  ``HIDDEN_DIMS`` floats of state per slot instead of ``hidden_size``, it needs no fitting (the
  logistic regression learns which directions matter), and one matrix serves every layer, so the
  shipped file stays small (a per-layer PCA would cost ``num_layers x hidden x dims`` floats).
- ``a``: attention the slot received in its KV head, averaged over the query heads sharing it (GQA):
  accumulated over every query so far (H2O's score), over a recent window (an exponential
  moving average with window :data:`RECENT_WINDOW` queries), and from the last query (TOVA's).
  The window and last-query shares are multiplied by the number of visible slots ``n`` so that a
  uniform share is 1 whether the cache holds 256 slots or the full run 2,000.
- ``f``: handcrafted: age (tokens since the slot's token), position in the cache (slot index /
  ``n``), key and value norms (mean over KV heads; rotation leaves a key's norm unchanged), and
  four token-type flags from the tokenizer (punctuation, newline, digit, first piece of a word).

Relevance is per KV head, as H2O keeps tokens per KV head (on SmolLM2 one choice per layer was
clearly worse): every feature has a leading ``H_kv`` axis; ``h``, age and the flags are the
token's, the same in every head.

Every feature is a column of :data:`FEATURE_NAMES`; :func:`feature_matrix` builds them.
"""

from __future__ import annotations

import math
import string

import torch

#: dimensions of the projected hidden state ``h``
HIDDEN_DIMS = 8
#: queries in the recent-attention window (decay ``1 - 1 / RECENT_WINDOW`` of its moving average)
RECENT_WINDOW = 32
#: the token-type flags, in column order
TOKEN_FLAGS = ("punctuation", "newline", "digit", "word_start")
ATTENTION_FEATURES = ("attention_accumulated", "attention_recent", "attention_last")
HANDCRAFTED = ("age", "cache_position", "key_norm", "value_norm", *TOKEN_FLAGS)
FEATURE_NAMES = (*(f"h{i}" for i in range(HIDDEN_DIMS)), *ATTENTION_FEATURES, *HANDCRAFTED)
NUM_FEATURES = len(FEATURE_NAMES)
#: the columns fixed when a token arrives: a linear predictor's share of them folds into one number
#: per slot (:meth:`.predictor.RelevancePredictor.static_logits`), so the cache need not keep them
STATIC_FEATURES = (*(f"h{i}" for i in range(HIDDEN_DIMS)), *TOKEN_FLAGS)
DYNAMIC_FEATURES = (*ATTENTION_FEATURES, *HANDCRAFTED[: len(HANDCRAFTED) - len(TOKEN_FLAGS)])
_EPS = 1e-6


def recent_decay() -> float:
    return 1.0 - 1.0 / RECENT_WINDOW


def hidden_projection(hidden_size: int, seed: int) -> torch.Tensor:
    """The fixed ``(hidden_size, HIDDEN_DIMS)`` Gaussian projection of ``h`` (variance 1/hidden_size)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(hidden_size, HIDDEN_DIMS, generator=generator) / math.sqrt(hidden_size)


def token_flags(tokenizer, vocab_size: int) -> torch.Tensor:
    """``(vocab_size, 4)`` uint8 table of :data:`TOKEN_FLAGS` for every token id, from its decoded text."""
    punctuation = set(string.punctuation) | set("“”‘’—–…«»")
    table = torch.zeros(vocab_size, len(TOKEN_FLAGS), dtype=torch.uint8)
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
    for i, text in enumerate(texts):
        stripped = text.strip()
        table[i, 0] = bool(stripped) and all(c in punctuation for c in stripped)
        table[i, 1] = "\n" in text
        table[i, 2] = any(c.isdigit() for c in text)
        table[i, 3] = text[:1].isspace() and stripped[:1].isalnum()
    return table


def recent_update(previous: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The recent-window average after this step's queries: ``previous`` ``(..., n)`` (zero for
    new slots), ``probs`` ``(..., q, n)`` in query order; per query ``e <- d e + (1 - d) p``."""
    decay = recent_decay()
    q = probs.shape[-2]
    weights = (1 - decay) * decay ** torch.arange(q - 1, -1, -1, dtype=probs.dtype, device=probs.device)
    return previous * decay**q + torch.einsum("q,...qn->...n", weights, probs)


def feature_matrix(hidden: torch.Tensor, accumulated: torch.Tensor, recent: torch.Tensor, last: torch.Tensor,
                   age: torch.Tensor, cache_index: torch.Tensor, visible: int, key_norm: torch.Tensor,
                   value_norm: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``(..., n, NUM_FEATURES)`` features of ``n`` slots (leading axes: KV heads): ``hidden``
    ``(..., n, HIDDEN_DIMS)`` projected states, the attention statistics and norms ``(..., n)``,
    ``age`` in tokens, ``cache_index`` the slot's index among the ``visible`` slots the last query
    saw, ``flags`` ``(..., n, 4)``; tensors without the leading axes are broadcast."""
    stats = dynamic_features(accumulated, recent, last, age, cache_index, visible, key_norm, value_norm)
    shape = stats.shape[:-1]
    return torch.cat([hidden.float().expand(*shape, -1), stats, flags.float().expand(*shape, -1)], dim=-1)


def dynamic_features(accumulated: torch.Tensor, recent: torch.Tensor, last: torch.Tensor, age: torch.Tensor,
                     cache_index: torch.Tensor, visible: int, key_norm: torch.Tensor,
                     value_norm: torch.Tensor) -> torch.Tensor:
    """``(..., n, len(DYNAMIC_FEATURES))``: the columns of :func:`feature_matrix` that change
    while a slot is cached (attention, age, position, norms), in :data:`DYNAMIC_FEATURES` order."""
    columns = [
        torch.log(accumulated + _EPS),
        torch.log(recent * visible + _EPS),
        torch.log(last * visible + _EPS),
        torch.log1p(age.float()),
        cache_index.float() / visible,
        key_norm,
        value_norm,
    ]
    return torch.stack(torch.broadcast_tensors(*[c.float() for c in columns]), dim=-1)


def static_features(hidden: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``(..., n, len(STATIC_FEATURES))``: the columns fixed when the token arrives (``h`` and the
    flags), in :data:`STATIC_FEATURES` order."""
    return torch.cat([hidden.float(), flags.float()], dim=-1)


def head_norms(states: torch.Tensor) -> torch.Tensor:
    """``(1, H_kv, n, D)`` -> ``(H_kv, n)``: each slot's L2 norm in each KV head."""
    return states[0].float().norm(dim=-1)
