"""Word swap: noisy teacher forcing against word co-occurrence priors (recipe ``swap_words``, ``swap_prob``).

Why: an autoregressive LM conditions every answer word on the words before it. When two attributes never
co-occur in the training answers — shapes world's held-out pairs, "orange" never before "star" — the LM learns
that from the text and overrides what the image shows: budget v5 wrote "a red star" under an orange star
(the article "a" had ruled out "orange"), and with the article fixed, "an orange circle" (the colour ruled out
"star"; benchmarks/training.md, budget v7). Both errors are the previous *word* deciding the next one.

What: in the *input* of a training example, an answer token that belongs to a swap group ("red", "orange",
... or "a", "an") is replaced, with probability ``prob``, by another member of its group, and that position's
own label is dropped (the model is never taught to write the swapped word). The next position keeps its true
label, so the model learns to predict the word *after* a colour (the shape) — or after an article (the
colour) — from the image even when the text before it is misleading. At inference nothing changes: the model
reads its own, unswapped output. Train split only; evaluation data is never swapped.

Groups are words; each must be one token of the tokenizer, in the spellings used: " red" (after a space),
" Red" and "Red" (sentence start) — a spelling in which any member is not one token is left out for the whole
group, and a group with no usable spelling is an error naming the word. Bare lower-case pieces ("red", "a")
are not looked up: they are also pieces of other words ("red" + "uce"). A token is swapped only when the next
token is also answer text and starts a new word (" star"): that next word is what the swap teaches, so a
one-word answer ("Orange.") keeps its label, and so does a piece inside a longer word ("Red" + "wood"). The
word right after a swap is never swapped itself ("a red": if " a" is swapped, " red" is what is taught). Swaps
stay within a spelling, so " red" becomes " orange", never "Orange".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from llavakit.data.masking import IGNORE_INDEX, Encoded
from llavakit.errors import LlavakitError

#: How groups are written in a recipe: words separated by commas, groups by semicolons.
SPEC_HELP = "comma-separated words, groups separated by ';' (e.g. 'red,green,blue;a,an')"


def parse_groups(spec: str) -> list[list[str]]:
    """``"red,green;a,an"`` → ``[["red", "green"], ["a", "an"]]``; each group needs two distinct words."""
    groups = [[w.strip() for w in part.split(",") if w.strip()] for part in spec.split(";") if part.strip()]
    for group in groups:
        if len(set(group)) < 2:
            raise LlavakitError(f"swap_words group {','.join(group)!r} needs at least two different words; "
                                f"write {SPEC_HELP}")
    return groups


#: The spellings a word is looked up in: after a space (mid-sentence), capitalised after a space, capitalised bare
#: (sentence start). Bare lower case is left out: such pieces also sit inside other words (module docstring).
_SPELLINGS = (lambda w: f" {w}", lambda w: f" {w.capitalize()}", lambda w: w.capitalize())


def _starts_word(text: str) -> bool:
    """" star" yes; "uce", ".", " 3" no."""
    return len(text) > 1 and text[0] == " " and text[1].isalpha()


def _single_token(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


@dataclass(frozen=True)
class WordSwap:
    """Swap groups as token ids (one tuple per group and spelling) and the per-token probability."""

    groups: tuple[tuple[int, ...], ...]
    prob: float
    word_starts: torch.Tensor  # (V,) bool: the token begins a new word (" star"), see __call__
    member_of: dict[int, tuple[int, ...]] = field(init=False, repr=False)  # token id -> its group, made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "member_of", {tid: group for group in self.groups for tid in group})

    @classmethod
    def from_spec(cls, tokenizer: Any, spec: str, prob: float) -> WordSwap | None:
        """The swap for a recipe's ``swap_words`` / ``swap_prob``; None when either is off."""
        if not spec.strip() or prob <= 0:
            return None
        if not 0 < prob <= 1:
            raise LlavakitError(f"swap_prob must be in (0, 1], got {prob}")
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        groups: list[tuple[int, ...]] = []
        for words in parse_groups(spec):
            found = 0
            for spell in _SPELLINGS:
                ids = [_single_token(tok, spell(w)) for w in words]
                if all(i is not None for i in ids) and len(set(ids)) == len(ids):
                    groups.append(tuple(ids))  # type: ignore[arg-type]
                    found += 1
            if not found:
                raise LlavakitError(f"swap_words group {','.join(words)!r}: no spelling in which every word is one "
                                    f"token of this tokenizer (tried ' word', ' Word', 'Word')")
        vocab = len(tok)
        starts = torch.tensor([_starts_word(tok.decode([i])) for i in range(vocab)], dtype=torch.bool)  # (V,)
        return cls(groups=tuple(dict.fromkeys(groups)), prob=float(prob), word_starts=starts)

    def __call__(self, example: Encoded, rng: random.Random) -> Encoded:
        """A copy of ``example`` with answer tokens swapped in the input and their own labels dropped."""
        ids = example.input_ids.clone()  # (T,)
        labels = example.labels.clone()  # (T,)
        n, last = len(ids), -2
        for t in (labels != IGNORE_INDEX).nonzero().flatten().tolist():
            group = self.member_of.get(int(ids[t]))
            if group is None or t + 1 >= n or labels[t + 1] == IGNORE_INDEX or last == t - 1:
                continue  # after a swap the next word keeps input and label: it is the word being taught
            nxt = int(ids[t + 1])
            if not (nxt < len(self.word_starts) and self.word_starts[nxt]) or rng.random() >= self.prob:
                continue
            ids[t] = rng.choice([g for g in group if g != int(ids[t])])
            labels[t] = IGNORE_INDEX  # never learn to write the swapped word; position t+1 keeps its label
            last = t
        return replace(example, input_ids=ids, labels=labels)

