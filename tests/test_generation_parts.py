"""Unit tests for the pieces of the generation loop: text streaming with stops, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from llavakit.runtime.sampling import filter_top_k_top_p, sample_next
from llavakit.runtime.text_stream import TextStream
from llavakit.runtime.types import GenerationConfig

# A toy "tokenizer": each id is a byte; decoding shows U+FFFD for an unfinished UTF-8 character.
decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731


def _run(text: str, stop=()) -> tuple[list[str], TextStream]:
    stream = TextStream(decode, stop)
    pieces = []
    for b in text.encode("utf-8"):
        pieces.append(stream.push(b))
        if stream.stopped:
            break
    pieces.append(stream.flush())
    return [p for p in pieces if p], stream


def test_multibyte_characters_are_never_split():
    pieces, stream = _run("héllo 北京 😀!")
    assert "".join(pieces) == "héllo 北京 😀!" == stream.text
    assert all("\ufffd" not in p for p in pieces)


def test_cut_inside_a_character_ends_text_and_pieces_alike():
    stream = TextStream(decode)
    pieces = [stream.push(b) for b in "ok 😀".encode("utf-8")[:-1]]  # max tokens hit mid-emoji
    pieces.append(stream.flush())
    assert "".join(pieces) == stream.text == "ok "


def test_stop_string_split_over_tokens_is_never_shown():
    pieces, stream = _run("abc STOP def", stop=["STOP"])
    assert "".join(pieces) == "abc " == stream.text and stream.stopped
    assert all("S" not in p for p in pieces)


def test_earliest_of_several_stops_wins():
    _, stream = _run("one two three", stop=["three", "two"])
    assert stream.text == "one "


def test_greedy_is_argmax_first_on_ties():
    logits = np.array([0.1, 3.0, 3.0, -1.0], dtype=np.float32)
    assert sample_next(logits, GenerationConfig(), [], np.random.default_rng(0)) == 1


def test_top_k_and_top_p_keep_only_the_best():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.isfinite(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [True, True, False, False]
    assert np.isfinite(filter_top_k_top_p(logits, 0, 0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(filter_top_k_top_p(logits, 0, 0.1)).tolist() == [True, False, False, False]


def test_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    cfg = GenerationConfig(do_sample=True, temperature=1.0)
    rng = np.random.default_rng(0)
    draws = np.bincount([sample_next(np.log(probs), cfg, [], rng) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(draws, probs, atol=0.03)


def test_repetition_penalty_discourages_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    cfg = GenerationConfig(repetition_penalty=2.0)
    assert sample_next(logits, cfg, [0], np.random.default_rng(0)) == 1


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("top_p", 0.0), ("top_k", -1)])
def test_invalid_settings_are_refused(field, value):
    from llavakit.errors import PromptError

    with pytest.raises(PromptError, match=field):
        GenerationConfig(**{field: value}).validate()
