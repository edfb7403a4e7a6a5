"""Prompts as token ids: a chat-template (or plain) frame around a context given as ids.

The context is never re-tokenised: the prompt is ``prefix_ids + context_ids + suffix_ids``, so
a needle placed at token ``i`` of the context is at token ``context_start + i`` of the prompt,
whatever merges the tokenizer would have made across the boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stands in for the user message while the chat template is rendered, then is split on. Any
# string the template leaves untouched works; this one cannot occur in a template.
_SENTINEL = "\x00CONTEXT\x00"


@dataclass(frozen=True)
class PromptParts:
    """What a task asks, around its context: user turn = instruction, context, question;
    the assistant turn opens with ``answer_prefix`` so greedy decoding starts at the answer."""

    instruction: str
    question: str
    answer_prefix: str = ""


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    context_start: int  # index in ``ids`` of the context's first token
    context_length: int

    @property
    def context_end(self) -> int:
        return self.context_start + self.context_length


class PromptFormat:
    """Frames contexts for one tokenizer: its chat template when it has one, else plain text.

    ``frame_lengths(parts)`` tells how many prompt tokens are not context, so a caller can size
    the context to hit a total prompt length exactly.
    """

    def __init__(self, tokenizer, use_chat_template: bool | None = None):
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _frame_texts(self) -> tuple[str, str]:
        if not self.use_chat_template:
            return "", ""
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
        )
        before, sentinel, after = rendered.partition(_SENTINEL)
        if not sentinel:
            raise ValueError("the chat template does not place the user message verbatim; pass use_chat_template=False")
        return before, after

    def _special_prefix(self) -> list[int]:
        # Plain prompts start as the tokenizer starts any text (e.g. with BOS); a chat template
        # carries its own special tokens.
        if self.use_chat_template:
            return []
        return self.tokenizer("", add_special_tokens=True)["input_ids"]

    def wrap(self) -> tuple[list[int], list[int]]:
        """(ids before, ids after) a user message given as ids, with nothing added inside it."""
        before, after = self._frame_texts()
        return self._special_prefix() + self._encode(before), self._encode(after)

    def frame(self, parts: PromptParts) -> tuple[list[int], list[int]]:
        """(ids before the context, ids after it)."""
        before, after = self._frame_texts()
        prefix = self._special_prefix() + self._encode(before + parts.instruction + "\n\n")
        if self.use_chat_template:
            suffix = self._encode("\n\n" + parts.question + after + parts.answer_prefix)
        else:
            suffix = self._encode("\n\n" + parts.question + "\n\n" + parts.answer_prefix)
        return prefix, suffix

    def frame_length(self, parts: PromptParts) -> int:
        prefix, suffix = self.frame(parts)
        return len(prefix) + len(suffix)

    def build(self, parts: PromptParts, context_ids: list[int]) -> Prompt:
        prefix, suffix = self.frame(parts)
        return Prompt(prefix + list(context_ids) + suffix, len(prefix), len(context_ids))
