"""The Python API on the torch backend: images, tags, streaming, stops, chat, bad input."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from llavakit import Pipeline
from llavakit.errors import ImageError, LlavakitError, PromptError
from llavakit.runtime.prompt import user_content


def _reference_ids(pipe: Pipeline, messages: list[dict], images: list, n: int) -> list[int]:
    """transformers' own greedy generate on the same rendered prompt."""
    backend = pipe.backend
    prepared = backend.prepare(messages, images)
    with torch.no_grad():
        out = backend.model.generate(**prepared.inputs, max_new_tokens=n, do_sample=False)
    return out[0, prepared.inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_zero_one_two_images_match_transformers(tiny_pipeline, n_images):
    images = [Image.new("RGB", (30 + 10 * i, 40), (40 * i, 100, 200)) for i in range(n_images)]
    result = tiny_pipeline.generate("Compare the pictures.", images=images, max_new_tokens=10)
    messages = [{"role": "user", "content": user_content("Compare the pictures.", n_images)}]
    assert result.token_ids == _reference_ids(tiny_pipeline, messages, images, 10)[: len(result.token_ids)]
    assert result.metrics.images == n_images
    expected_prompt_tokens = tiny_pipeline.backend.prompt_length(tiny_pipeline.backend.prepare(messages, images))
    assert result.metrics.prompt_tokens == expected_prompt_tokens
    assert result.metrics.generated_tokens == len(result.token_ids)
    assert result.metrics.time_to_first_token_s > 0


def test_image_tags_place_images_in_order(tiny_pipeline, red_image):
    parts = user_content("First <image>\nthen <image>\nwhich is bigger?", 2)
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert parts[2]["text"] == "then "
    result = tiny_pipeline.generate("A <image> and B <image>?", images=[red_image, red_image], max_new_tokens=3)
    assert len(result.token_ids) >= 1


@pytest.mark.parametrize("prompt,n", [("<image> what?", 0), ("<image> <image> what?", 1), ("<image> what?", 2)])
def test_wrong_number_of_image_tags_is_a_clear_error(tiny_pipeline, red_image, prompt, n):
    with pytest.raises(PromptError, match=rf"{prompt.count('<image>')} <image> tag\(s\) but {n} image\(s\)"):
        tiny_pipeline.generate(prompt, images=[red_image] * n, max_new_tokens=2)


def test_stream_pieces_join_to_generate_text(tiny_pipeline, red_image):
    whole = tiny_pipeline.generate("Tell me.", images=[red_image], max_new_tokens=24)
    generation = tiny_pipeline.stream("Tell me.", images=[red_image], max_new_tokens=24)
    pieces = list(generation)
    assert "".join(pieces) == whole.text == generation.result.text
    assert generation.result.token_ids == whole.token_ids


def test_stop_string_ends_generation_and_is_removed(tiny_pipeline, red_image):
    whole = tiny_pipeline.generate("Tell me.", images=[red_image], max_new_tokens=24)
    assert len(whole.text) > 6, whole.text
    stop = whole.text[3:6]
    result = tiny_pipeline.generate("Tell me.", images=[red_image], max_new_tokens=24, stop=[stop])
    assert result.finish_reason == "stop"
    assert result.text == whole.text[: whole.text.index(stop)]
    streamed = "".join(tiny_pipeline.stream("Tell me.", images=[red_image], max_new_tokens=24, stop=stop))
    assert streamed == result.text


def test_max_new_tokens_and_sampling_seed(tiny_pipeline):
    greedy = tiny_pipeline.generate("Hello", max_new_tokens=5)
    assert len(greedy.token_ids) == 5 and greedy.finish_reason == "length"
    a = tiny_pipeline.generate("Hello", max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, seed=7)
    b = tiny_pipeline.generate("Hello", max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, seed=7)
    c = tiny_pipeline.generate("Hello", max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, seed=8)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_prompt_longer_than_context_is_refused(tiny_pipeline):
    limit = tiny_pipeline.backend.max_context
    with pytest.raises(PromptError, match=rf"model's context is {limit} tokens"):
        tiny_pipeline.generate("word " * (limit + 10), max_new_tokens=2)


def test_bad_settings_and_images_are_clear_errors(tiny_pipeline, tmp_path):
    with pytest.raises(LlavakitError, match="unknown generation setting"):
        tiny_pipeline.generate("hi", max_tokens=3)
    with pytest.raises(PromptError, match="temperature must be > 0"):
        tiny_pipeline.generate("hi", do_sample=True, temperature=0)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        tiny_pipeline.generate("hi", images=[bad])
    with pytest.raises(ImageError):
        tiny_pipeline.generate("hi", images=[b""])


def test_image_sources_path_bytes_pil_agree(tiny_pipeline, tmp_path, red_image):
    path = tmp_path / "red.png"
    red_image.save(path)
    buffer = io.BytesIO()
    red_image.save(buffer, format="PNG")
    results = [
        tiny_pipeline.generate("Color?", images=[src], max_new_tokens=6).token_ids
        for src in (red_image, path, str(path), buffer.getvalue())
    ]
    assert all(r == results[0] for r in results)


def test_chat_keeps_history_and_a_failed_turn_changes_nothing(tiny_pipeline, red_image, tmp_path):
    chat = tiny_pipeline.chat()
    first = chat.send("What is this?", images=[red_image], max_new_tokens=6)
    second = chat.send("And now?", max_new_tokens=6)
    assert len(chat.messages) == 4 and len(chat.images) == 1
    # Turn 2 equals the same conversation run from scratch.
    history = chat.messages[:2] + [{"role": "user", "content": user_content("And now?", 0)}]
    again = tiny_pipeline.stream_messages(history, [red_image], max_new_tokens=6).finish()
    assert second.token_ids == again.token_ids
    assert chat.messages[1]["content"][0]["text"] == first.text

    snapshot = (list(chat.messages), list(chat.images))
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        chat.send("Look", images=[bad])
    with pytest.raises(PromptError):
        chat.send("<image> <image>", images=[red_image])
    assert (chat.messages, chat.images) == snapshot
    chat.reset()
    assert chat.messages == [] and chat.images == []


def test_unknown_backend_and_device(tiny_llava):
    with pytest.raises(LlavakitError, match="unknown backend 'tpu'"):
        Pipeline(tiny_llava, backend="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LlavakitError, match=r"available: \['cpu'\]"):
            Pipeline(tiny_llava, backend="torch", device="cuda")


@pytest.mark.parametrize("mode,size", [("RGBA", (1, 1)), ("I;16", (33, 17)), ("CMYK", (20, 200)), ("P", (300, 7)),
                                       ("L", (1, 1)), ("1", (64, 64))])
def test_unusual_images_run_end_to_end(tiny_pipeline, tmp_path, mode, size):
    path = tmp_path / ("image.tiff" if mode == "CMYK" else "image.png")
    Image.new(mode, size).save(path)
    result = tiny_pipeline.generate("What is it?", images=[path], max_new_tokens=3)
    assert len(result.token_ids) >= 1


def test_eos_stops_unless_ignored(tiny_pipeline):
    backend = tiny_pipeline.backend
    first = tiny_pipeline.generate("Hello", max_new_tokens=5).token_ids[0]
    saved = set(backend.eos_token_ids)
    backend.eos_token_ids = saved | {first}
    try:
        stopped = tiny_pipeline.generate("Hello", max_new_tokens=5)
        assert stopped.token_ids == [first] and stopped.finish_reason == "stop" and stopped.text == ""
        forced = tiny_pipeline.generate("Hello", max_new_tokens=5, ignore_eos=True)
        assert len(forced.token_ids) == 5 and forced.finish_reason == "length"
    finally:
        backend.eos_token_ids = saved
