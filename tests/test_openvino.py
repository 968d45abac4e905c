"""The OpenVINO export and engine on tiny models: parity with transformers, cache reuse, GenAI interop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image

from llavakit import Pipeline
from llavakit.errors import LlavakitError
from llavakit.export import layout
from llavakit.runtime.prompt import user_content

SOLID = Image.new("RGB", (40, 30), (200, 30, 30))  # resize-invariant: every resampler gives the same pixels
BLUE = Image.new("RGB", (20, 50), (0, 0, 255))


def test_layout_names_and_stateful_language_model(tiny_export):
    assert layout.is_exported(tiny_export)
    lm = ov.Core().read_model(tiny_export / layout.LANGUAGE_MODEL)
    assert [i.get_any_name() for i in lm.inputs] == ["inputs_embeds", "attention_mask", "position_ids", "beam_idx"]
    assert [o.get_any_name() for o in lm.outputs] == ["logits"]
    assert len(lm.get_sinks()) == 2 * 2  # key + value state per layer
    report = json.loads((tiny_export / layout.EXPORT_REPORT).read_text())
    assert set(report["parts"]) >= {"vision embeddings", "text embeddings", "language model", "tokenizer"}


def test_prefill_logits_match_transformers(ov_pipeline, tiny_pipeline):
    messages = [{"role": "user", "content": user_content("What is it?", 1)}]
    ov_logits = ov_pipeline.backend.prefill(ov_pipeline.backend.prepare(messages, [SOLID]))
    torch_prompt = tiny_pipeline.backend.prepare(messages, [SOLID])
    with torch.no_grad():
        ref = tiny_pipeline.backend.model(**torch_prompt.inputs).logits[0, -1].numpy()
    np.testing.assert_allclose(ov_logits, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("images", [[], [SOLID], [SOLID, BLUE]], ids=["text", "one-image", "two-images"])
def test_greedy_32_tokens_identical_to_transformers(ov_pipeline, tiny_pipeline, images):
    ours = ov_pipeline.generate("Describe the picture.", images=images, max_new_tokens=32)
    ref = tiny_pipeline.generate("Describe the picture.", images=images, max_new_tokens=32)
    assert ours.token_ids == ref.token_ids
    assert ours.text == ref.text


def test_cached_decode_equals_full_recompute(ov_pipeline):
    backend = ov_pipeline.backend
    messages = [{"role": "user", "content": user_content("Hi there", 1)}]
    prompt = backend.prepare(messages, [SOLID])
    backend.reset()
    logits = backend.prefill(prompt)
    tokens = []
    for _ in range(5):
        tokens.append(int(np.argmax(logits)))
        logits = backend.decode_one(tokens[-1])
    # The same sequence from an empty cache in one prefill.
    prompt.token_ids = prompt.token_ids + tokens
    prompt.keys = prompt.keys + tokens
    backend.reset()
    full = backend.prefill(prompt)
    np.testing.assert_allclose(logits, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rows, limit, sizes", [(72, 64, [36, 36]), (200, 64, [50, 50, 50, 50]), (64, 64, [64]),
                                               (7, 3, [3, 2, 2]), (10, 0, [10])])
def test_prefill_chunks_are_balanced(rows, limit, sizes):
    from llavakit.runtime.ov_backend import prefill_chunks

    assert prefill_chunks(rows, limit) == sizes


def test_chunked_prefill_equals_one_call(ov_pipeline):
    """A prefill cut into chunks (each attending to the state so far) gives the one-call logits and greedy text."""
    backend = ov_pipeline.backend
    prompt = backend.prepare([{"role": "user", "content": user_content("Describe it in detail", 1)}], [SOLID])
    assert backend.prompt_length(prompt) > 8
    chunk = backend.prefill_chunk
    try:
        answers = {}
        for limit in (0, 5):
            backend.prefill_chunk = limit
            backend.reset()
            logits = backend.prefill(prompt)
            backend.reset()  # else the next request would find the whole prompt in the prefix cache
            answers[limit] = logits, ov_pipeline.generate("Describe it in detail", [SOLID], max_new_tokens=12).text
    finally:
        backend.prefill_chunk = chunk
    np.testing.assert_allclose(answers[0][0], answers[5][0], atol=1e-4, rtol=1e-4)
    assert answers[0][1] == answers[5][1]


def test_chat_turn_two_reuses_cache_and_equals_scratch(tiny_export, ov_pipeline):
    chat = ov_pipeline.chat()
    chat.send("What is this?", images=[SOLID], max_new_tokens=8)
    second = chat.send("And the colour?", max_new_tokens=8)
    assert second.metrics.cached_tokens > 0.5 * second.metrics.prompt_tokens
    assert second.metrics.image_encode_s == 0.0  # features reused, not recomputed
    fresh = Pipeline(tiny_export, precise=True)  # nothing cached
    history = chat.messages[:2] + [{"role": "user", "content": user_content("And the colour?", 0)}]
    scratch = fresh.stream_messages(history, [SOLID], max_new_tokens=8).finish()
    assert scratch.metrics.cached_tokens == 0
    assert second.token_ids == scratch.token_ids


def test_repeated_request_answers_from_cache(ov_pipeline):
    first = ov_pipeline.generate("Same question?", images=[BLUE], max_new_tokens=4)
    again = ov_pipeline.generate("Same question?", images=[BLUE], max_new_tokens=4)
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    assert again.token_ids == first.token_ids


def test_chat_template_and_tokenizer_match_transformers(ov_pipeline, tiny_pipeline):
    conversations = [
        [{"role": "user", "content": user_content("Hello <image> there", 1)}],
        [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
         {"role": "user", "content": user_content("Two?", 2)},
         {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
         {"role": "user", "content": user_content("Sure? 12 ü 北京", 0)}],
    ]
    for messages in conversations:
        text = ov_pipeline.backend.render(messages)
        assert text == tiny_pipeline.backend.render(messages)
        hf_ids = tiny_pipeline.backend.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ov_pipeline.backend.tokenize(text) == hf_ids


def test_openvino_genai_vlmpipeline_loads_our_export(tiny_export, ov_pipeline):
    genai = pytest.importorskip("openvino_genai")
    pipe = genai.VLMPipeline(str(tiny_export), "CPU", INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = 24, False
    for prompt, images in [("What is it?", [SOLID]), ("Hello", [])]:
        tensors = [ov.Tensor(np.asarray(im)[None]) for im in images]
        theirs = pipe.generate(prompt, images=tensors, generation_config=config).texts[0]
        ours = ov_pipeline.generate(prompt, images=images, max_new_tokens=24).text
        # GenAI keeps the U+FFFD of a character cut by max_new_tokens; llavakit drops it (text == streamed pieces)
        assert ours == theirs.rstrip("\ufffd")
        assert len(ours) > 0


def test_openvino_path_does_not_import_torch(tiny_export, tmp_path):
    SOLID.save(tmp_path / "red.png")
    code = (
        "import sys\n"
        "from llavakit import Pipeline\n"
        f"r = Pipeline({str(tiny_export)!r}).generate('Hi', images=[{str(tmp_path / 'red.png')!r}], max_new_tokens=3)\n"
        "assert r.token_ids, r\n"
        "leaked = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_missing_device_lists_available(tiny_export):
    with pytest.raises(LlavakitError, match=r"device 'NPU' is not available to OpenVINO; available: \[.*'CPU'"):
        Pipeline(tiny_export, device="NPU")


def test_export_refuses_existing_dir_and_leaves_nothing_on_failure(tiny_llava, tmp_path, monkeypatch):
    from llavakit.export import exporter

    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(LlavakitError, match="--force"):
        exporter.export_openvino(tiny_llava, existing, show_progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the middle of the export")

    monkeypatch.setattr(exporter, "convert_language_model", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        exporter.export_openvino(tiny_llava, tmp_path / "half", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_context_overflow_error_or_drop_oldest(ov_pipeline):
    limit = ov_pipeline.backend.max_context
    per_word = len(ov_pipeline.backend.tokenize("word " * 100)) / 100
    long_turn = "word " * int(0.4 * limit / per_word)  # each turn ~40% of the context
    strict = ov_pipeline.chat()
    strict.send(long_turn, max_new_tokens=2)
    strict.send(long_turn, max_new_tokens=2)
    with pytest.raises(LlavakitError, match="context"):
        strict.send(long_turn, max_new_tokens=2)
    assert len(strict.messages) == 4
    lenient = ov_pipeline.chat(overflow="drop_oldest")
    for _ in range(4):
        lenient.send(long_turn, max_new_tokens=2)
    assert 2 <= len(lenient.messages) < 8
