"""Word swap (noisy teacher forcing, data/word_swap.py): what is swapped, what keeps its label, and a real run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from llavakit.data import ConversationDataset, read_dataset, validate
from llavakit.data.masking import IGNORE_INDEX, encode_conversation
from llavakit.data.word_swap import WordSwap, parse_groups
from llavakit.errors import LlavakitError
from llavakit.train import TrainJob, resolve_recipe, train
from llavakit.train.recipes import RecipeError

COLOURS = "red,green,blue,yellow,purple,orange;a,an"


def _caption_example(processor, answer: str):  # noqa: ANN001, ANN202
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return encode_conversation(processor, messages, [Image.new("RGB", (32, 32), "red")])


def test_every_swappable_word_is_swapped_within_its_group_and_only_its_own_label_dropped(smollm2_processor) -> None:
    processor = smollm2_processor  # SmolLM2's real tokenizer: the colours and articles are one token each
    swap = WordSwap.from_spec(processor, COLOURS, 1.0)
    example = _caption_example(processor, "A picture of a small red circle and an orange star. Orange.")
    out = swap(example, random.Random(0))
    tok = processor.tokenizer
    members = {tid: group for group in swap.groups for tid in group}
    changed = (out.input_ids != example.input_ids).nonzero().flatten().tolist()
    words = [tok.decode([int(example.input_ids[t])]) for t in changed]
    # "A" (before " picture"), " a", " red" (after " small"), " an"; not " orange" (right after the swapped " an":
    # it is the word taught) nor the one-word answer "Orange" (next is ".")
    assert words == ["A", " a", " red", " an"]
    for t in changed:
        old, new = int(example.input_ids[t]), int(out.input_ids[t])
        assert new != old and new in members[old]
        assert out.labels[t] == IGNORE_INDEX  # never taught to write the swapped word
        assert out.labels[t + 1] == example.labels[t + 1] != IGNORE_INDEX  # the next word is still taught
    kept = torch.ones(len(example), dtype=torch.bool)
    kept[changed] = False
    assert torch.equal(out.input_ids[kept], example.input_ids[kept])
    assert torch.equal(out.labels[kept], example.labels[kept])
    assert example.labels[changed[0]] != IGNORE_INDEX  # the input example itself is untouched


def test_off_and_bad_specs() -> None:
    assert WordSwap.from_spec(object(), COLOURS, 0.0) is None
    assert WordSwap.from_spec(object(), "  ", 0.5) is None
    assert parse_groups("red, green ;a,an") == [["red", "green"], ["a", "an"]]
    with pytest.raises(LlavakitError, match="at least two different words"):
        parse_groups("red;a,an")
    with pytest.raises(RecipeError, match="needs swap_words"):
        resolve_recipe("instruct", overrides={"swap_prob": 0.3})
    with pytest.raises(RecipeError, match="at least two different words"):
        resolve_recipe("instruct", overrides={"swap_words": "red;a,an", "swap_prob": 0.3})
    with pytest.raises(RecipeError, match=r"swap_prob must be in \[0, 1\]"):
        resolve_recipe("instruct", overrides={"swap_words": COLOURS, "swap_prob": 1.5})


def test_a_word_that_is_not_one_token_is_a_clear_error(smollm2_processor) -> None:
    with pytest.raises(LlavakitError, match="no spelling in which every word is one token"):
        WordSwap.from_spec(smollm2_processor, "red,zqxjvkw", 0.5)


def test_training_swaps_the_train_split_only_and_records_the_recipe(tiny_llava: Path, tmp_path: Path,
                                                                    two_train_samples: Path,
                                                                    one_torch_thread: None) -> None:
    words = "a,the"  # one token each in the tiny model's 400-token BPE (the colours are not)
    recipe = resolve_recipe("instruct", overrides={
        "max_steps": 2, "batch_size": 2, "grad_accum": 1, "save_steps": 100, "logging_steps": 1,
        "swap_words": words, "swap_prob": 1.0})
    result = train(TrainJob(model=tiny_llava, data=two_train_samples, out=tmp_path / "out", progress=False,
                            recipe=recipe, eval_data=two_train_samples))
    assert result.steps == 2
    saved = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert (saved["swap_words"], saved["swap_prob"]) == (words, 1.0)
    # the same samples through the dataset the trainer builds: swapped with the swap, unchanged without
    processor = AutoProcessor.from_pretrained(tiny_llava)
    samples = validate(read_dataset(two_train_samples))
    plain = ConversationDataset(samples, processor)
    swapped = ConversationDataset(samples, processor, swap=WordSwap.from_spec(processor, words, 1.0))
    diffs = [int((plain[i].input_ids != swapped[i].input_ids).sum()) for i in range(len(samples))]
    assert sum(diffs) > 0
