"""What ATSKV reads from the model call besides attention: each layer's input to attention and
the call's token ids, noted by forward pre-hooks that :class:`~.cache.ATSKVCache` installs on the
model instance (and removes on ``disable()``), in the way :mod:`streaming_llm.session` does."""

from __future__ import annotations

import torch


def _argument(args: tuple, kwargs: dict, name: str):
    value = kwargs.get(name)
    if value is None and args and isinstance(args[0], torch.Tensor):
        value = args[0]
    return value


class FeatureTap:
    """The latest call's hidden states per layer ``(q, hidden)`` and token ids ``(q,)``."""

    def __init__(self):
        self.hidden: dict[int, torch.Tensor] = {}
        self.token_ids: torch.Tensor | None = None

    def note_inputs(self, module, args: tuple, kwargs: dict) -> None:
        ids = _argument(args, kwargs, "input_ids")
        self.token_ids = ids[0].detach().cpu() if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None

    def note_hidden(self, layer_idx: int, module, args: tuple, kwargs: dict) -> None:
        hidden = _argument(args, kwargs, "hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
            self.hidden[layer_idx] = hidden[0].detach()

    def take_hidden(self, layer_idx: int, q: int) -> torch.Tensor | None:
        """The ``(q, hidden)`` states of this step's ``q`` tokens at ``layer_idx``, once."""
        hidden = self.hidden.pop(layer_idx, None)
        return hidden[-q:] if hidden is not None and hidden.shape[0] >= q else None

    def new_token_ids(self, q: int) -> torch.Tensor | None:
        ids = self.token_ids
        return ids[-q:] if ids is not None and ids.shape[0] >= q else None
