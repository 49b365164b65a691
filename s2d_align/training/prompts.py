"""Prompt text and token layout: ``<visual> instruction [signal parts] answer target``.

The visual tokens are prepended by the model; everything here is the text that follows them.
Templates come from :class:`~s2d_align.config.schema.PromptConfig`, never from code. The prompt
and the target are tokenised separately, so the prompt a model
sees at generation time is token-for-token the prompt it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from s2d_align.config.schema import PromptConfig
from s2d_align.errors import ConfigError

#: Separator between key phrases inside the ``{text}`` slot of the key-phrase template.
KEYPHRASE_SEPARATOR = "; "
#: Separator between several retrieved reference reports (``retrieval.k > 1``).
REFERENCE_SEPARATOR = " "
#: Auxiliary text used for the alignment loss when a study has no key phrase at all (the
#: InfoNCE needs a non-empty text for every row of the batch).
EMPTY_KEYPHRASES = "no key phrases"


@dataclass(frozen=True)
class TokenBudget:
    """How the ``model.llm.max_length`` text tokens are shared between prompt parts and target.

    A long reference report must not crowd out the target: it is cut to ``reference`` tokens,
    key phrases to ``keyphrases`` tokens; the target gets whatever remains (at least ``min_target``).
    """

    max_length: int
    reference: int
    keyphrases: int
    min_target: int

    @classmethod
    def from_max_length(cls, max_length: int) -> TokenBudget:
        if max_length < 16:
            raise ConfigError(f"model.llm.max_length must be >= 16, got {max_length}")
        return cls(
            max_length=max_length,
            reference=max_length * 3 // 8,
            keyphrases=max_length // 4,
            min_target=max_length // 4,
        )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (unchanged when it fits)."""
    ids = _ids(tokenizer, text)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).rstrip()


class PromptBuilder:
    """Builds the token ids of prompts and targets for one tokenizer and prompt config."""

    def __init__(self, tokenizer: Any, prompt: PromptConfig, max_length: int) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer needs eos and pad tokens")
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.budget = TokenBudget.from_max_length(max_length)

    def prompt_text(self, parts: Sequence[str]) -> str:
        """The prompt as text: instruction, the signals' ``parts`` (rendered in prompt order by
        :func:`s2d_align.training.signals.render_parts`), answer prefix, joined by single spaces;
        empty parts are left out."""
        texts = [self.prompt.instruction.strip(), *parts, self.prompt.answer_prefix.strip()]
        return " ".join(p for p in texts if p)

    def prompt_ids(self, parts: Sequence[str]) -> list[int]:
        ids = _ids(self.tokenizer, self.prompt_text(parts))
        # The budget makes this rare (a very long instruction); keep the end, which holds the
        # answer prefix the model continues from.
        limit = self.budget.max_length - self.budget.min_target
        return ids[-limit:] if len(ids) > limit else ids

    def target_ids(self, report: str, prompt_len: int) -> list[int]:
        """Target tokens + eos. The report is tokenised on its own, without a leading space: the
        way the LM saw reports start in pre-training (a tiny BPE splits " Frontal" into rare
        pieces where "Frontal" is one token, and the first word becomes hard to learn)."""
        room = max(self.budget.max_length - prompt_len - 1, 1)
        ids = _ids(self.tokenizer, report.strip())[:room]
        return [*ids, self.tokenizer.eos_token_id]

    def aux_ids(self, text: str) -> list[int]:
        """Auxiliary text for the alignment loss (reference report or key phrases)."""
        ids = _ids(self.tokenizer, text.strip() or EMPTY_KEYPHRASES)
        return ids[: self.budget.max_length] or [self.tokenizer.eos_token_id]
