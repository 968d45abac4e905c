"""Runtime LoRA: PEFT adapters switched per request on one compiled OpenVINO model.

The adapters are made by PEFT itself (``get_peft_model`` + random non-zero B + ``save_pretrained``),
one of them with a fully trained projector as ``llavakit train --lora`` saves it. References are
independent of the runtime code: transformers models with the adapter merged by PEFT
(``merge_and_unload``), and the torch backend's PEFT multi-adapter path for mixes.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from test_serve_support import Server, data_url, png_bytes, set_number

from llavakit import Pipeline
from llavakit.errors import LlavakitError
from llavakit.runtime.lora import parse_spec

LM = r".*language_model.*\."
KW = {"max_new_tokens": 6, "ignore_eos": True}
LLAVAKIT = str(Path(sys.executable).with_name("llavakit"))


def _make_adapter(base: Path, out: Path, targets: str, r: int, seed: int, projector: bool = False) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=LM + targets,
                        modules_to_save=["multi_modal_projector"] if projector else None)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # PEFT initialises B to zero: the adapter would do nothing
            elif projector and "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.3)  # a "trained" projector
    peft_model.save_pretrained(out)
    return out


def _merged(base: Path, adapter: Path, out: Path) -> Path:
    """The base model with ``adapter`` merged by PEFT, saved as a plain HF LLaVA."""
    from llavakit.train.lora import load_adapter, merge_lora

    merge_lora(load_adapter(base, adapter)).save_pretrained(out)
    for item in base.iterdir():
        if item.is_file() and not (out / item.name).exists():
            shutil.copyfile(item, out / item.name)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": _make_adapter(tiny_llava, root / "a", "(q_proj|v_proj)", r=4, seed=1),
        "b": _make_adapter(tiny_llava, root / "b", "(o_proj|gate_proj|down_proj)", r=2, seed=2, projector=True),
    }


@pytest.fixture(scope="module")
def lora_export(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``llavakit export --lora-slots`` as a user runs it (fp32: parity with transformers is exact)."""
    out = tmp_path_factory.mktemp("ov-lora") / "tiny-lora"
    done = subprocess.run([LLAVAKIT, "export", str(tiny_llava), "--out", str(out), "--weights", "fp32", "--vision",
                           "fp32", "--text-embeddings", "fp32", "--lora-slots"], check=False, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert (out / "llavakit_lora.json").is_file()
    return out


@pytest.fixture(scope="module")
def lora_pipe(lora_export: Path, adapters: dict[str, Path]) -> Pipeline:
    return Pipeline(lora_export, precise=True, adapters=adapters)


@pytest.fixture(scope="module")
def merged(tiny_llava: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("merged")
    return {name: Pipeline(_merged(tiny_llava, path, root / name), backend="torch") for name, path in adapters.items()}


def _messages(text: str, images: int) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


def _first_logits(pipe: Pipeline, text: str, images: list, adapter=None) -> np.ndarray:
    prepared = pipe.backend.prepare(_messages(text, len(images)), images)
    prepared.adapter = parse_spec(adapter, pipe.adapters)
    return pipe.backend.prefill(prepared)  # (V,)


def test_no_adapter_is_bit_exact_with_a_plain_export(lora_pipe: Pipeline, ov_pipeline: Pipeline,
                                                     red_image: Image.Image) -> None:
    for images in ([], [red_image]):
        for pipe in (lora_pipe, ov_pipeline):  # a shared fixture may hold another test's prefix: both prefill whole
            pipe.backend.reset()
        expected = _first_logits(ov_pipeline, "What is this?", images)
        assert np.array_equal(_first_logits(lora_pipe, "What is this?", images), expected)
        assert np.array_equal(lora_pipe.backend.decode_one(5), ov_pipeline.backend.decode_one(5))
    args = ("Describe it.", [red_image])
    assert lora_pipe.generate(*args, **KW).token_ids == ov_pipeline.generate(*args, **KW).token_ids


def test_interleaved_adapters_equal_the_merged_torch_model(lora_pipe: Pipeline, merged: dict, ov_pipeline: Pipeline,
                                                           red_image: Image.Image) -> None:
    """Same prompt again and again, adapter changing: a cached prefix must never leak across adapters."""
    reference = {name: pipe for name, pipe in merged.items()}
    reference[None] = ov_pipeline
    for adapter, images in [("a", [red_image]), (None, [red_image]), ("b", [red_image]), ("a", []), ("b", []),
                            ("a", [red_image]), (None, []), ("b", [red_image])]:
        got = _first_logits(lora_pipe, "What colour is it?", images, adapter)
        want = _first_logits(reference[adapter], "What colour is it?", images)
        assert not np.array_equal(got, _first_logits(ov_pipeline, "What colour is it?", images)) or adapter is None
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"adapter {adapter}")
        ours = lora_pipe.generate("What colour is it?", images, adapter=adapter, **KW)
        assert ours.token_ids == reference[adapter].generate("What colour is it?", images, **KW).token_ids, adapter
    assert lora_pipe.backend.cached_tokens > 0  # reuse still works under one adapter


def test_mix_and_alpha_match_peft_multi_adapter_on_torch(lora_pipe: Pipeline, tiny_llava: Path,
                                                         adapters: dict[str, Path], red_image: Image.Image) -> None:
    torch_pipe = Pipeline(tiny_llava, backend="torch", adapters=adapters)
    for spec in ({"a": 0.5, "b": 0.7}, "a:0.5", {"b": 1.5}, None):
        ours = _first_logits(lora_pipe, "Hi there", [red_image], spec)
        peft = _first_logits(torch_pipe, "Hi there", [red_image], spec)
        np.testing.assert_allclose(ours, peft, atol=2e-4, rtol=1e-4, err_msg=str(spec))
        got = lora_pipe.generate("Hi there", [red_image], adapter=spec, **KW).token_ids
        assert got == torch_pipe.generate("Hi there", [red_image], adapter=spec, **KW).token_ids
    assert parse_spec("a:0.5", lora_pipe.adapters) == parse_spec({"a": 0.5}, lora_pipe.adapters) == (("a", 0.5),)
    chat = lora_pipe.chat()  # a conversation may change adapter between turns
    first = chat.send("Hello", adapter="a", **KW)
    second = chat.send("And again", adapter="b", **KW)
    assert first.token_ids and second.token_ids


def test_bad_adapters_are_clear_errors(lora_pipe: Pipeline, lora_export: Path, tiny_export: Path, tiny_llava: Path,
                                       adapters: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(LlavakitError, match=r"unknown adapter\(s\) \['nope'\]; loaded: \['a', 'b'\]"):
        lora_pipe.generate("Hi", adapter="nope")
    with pytest.raises(LlavakitError, match="finite"):
        lora_pipe.generate("Hi", adapter={"a": float("nan")})
    with pytest.raises(LlavakitError, match="is not a directory"):
        Pipeline(lora_export, adapters={"x": tmp_path / "missing"})
    with pytest.raises(LlavakitError, match="without LoRA slots.*--lora-slots"):
        Pipeline(tiny_export, adapters={"a": adapters["a"]})
    other = tmp_path / "other-base"  # as if trained on a model with 48-wide layers
    shutil.copytree(adapters["a"], other)
    weights = load_file(other / "adapter_model.safetensors")
    save_file({k: np.ones((4, 48), np.float32) if "lora_A" in k else v for k, v in weights.items()},
              other / "adapter_model.safetensors")
    with pytest.raises(LlavakitError, match="does not fit this model.*different base model"):
        Pipeline(lora_export, adapters={"other": other})
    with pytest.raises(LlavakitError, match="does not fit this model"):
        Pipeline(tiny_llava, backend="torch", adapters={"other": other})
    ranks = tmp_path / "ranks"
    shutil.copytree(adapters["a"], ranks)
    save_file({k: v[:3] if "lora_A" in k else v for k, v in weights.items()}, ranks / "adapter_model.safetensors")
    with pytest.raises(LlavakitError, match="ranks must agree"):
        Pipeline(lora_export, adapters={"ranks": ranks})
    assert lora_pipe.generate("Hi", adapter="a", max_new_tokens=2).token_ids  # still serving


def test_chat_command_takes_an_adapter_with_alpha(lora_pipe: Pipeline, lora_export: Path,
                                                  adapters: dict[str, Path]) -> None:
    want = lora_pipe.generate("Hi", adapter={"a": 0.5}, max_new_tokens=6).text
    done = subprocess.run([LLAVAKIT, "chat", str(lora_export), "Hi", "--adapter", f"{adapters['a']}:0.5",
                           "--max-new-tokens", "6", "--no-stats"], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == want.strip()
    bad = subprocess.run([LLAVAKIT, "serve", str(lora_export), "--adapter", "no-equals-sign"], check=False,
                         capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "NAME=PATH" in bad.stderr


def test_server_selects_the_adapter_by_model(lora_pipe: Pipeline, lora_export: Path, adapters: dict[str, Path]) -> None:
    server = Server(lora_export, "--served-model-name", "tiny", "--slots", "2", "--adapter", f"a={adapters['a']}",
                    "--adapter", f"b={adapters['b']}", "--ui")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["tiny", "a", "b"]
        red = data_url(png_bytes())
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": red}},
                                                 {"type": "text", "text": "What is it?"}]}]
        image = Image.open(io.BytesIO(png_bytes()))
        local = Pipeline(lora_export, adapters=adapters)  # the server's compile settings (not precise=True)
        replies = {}
        for model, adapter in (("a", "a"), ("tiny", None), ("b", "b"), ("a", "a")):
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                                   extra_body={"ignore_eos": True})
            want = "".join(local.stream("What is it?", [image], adapter=adapter, **KW))  # the streamed pieces
            assert reply.model == model and reply.choices[0].message.content == want, model
            replies[model] = want
        assert len(set(replies.values())) == 3  # the adapters really change the answer

        def ask(model: str) -> str:
            return client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                                  extra_body={"ignore_eos": True}).choices[0].message.content

        order = ["a", "b", "tiny", "b", "a", "tiny"]  # two slots, adapters switching under concurrent requests
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(ask, order)) == [replies[m] for m in order]
        with pytest.raises(openai.NotFoundError, match="model_not_found|not served"):
            client.chat.completions.create(model="c", messages=messages, max_tokens=2)
        after = client.chat.completions.create(model="b", messages=messages, max_tokens=2)  # still serving
        assert after.choices[0].finish_reason in ("length", "stop") and after.usage.completion_tokens >= 1
        # a weight or a mix rides in the model id ("a:0.5", "a:0.5+b:0.5"): same answer as the Pipeline's
        for model, adapter in (("a:0.5", "a:0.5"), ("a:0.5+b:0.5", {"a": 0.5, "b": 0.5})):
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                                   extra_body={"ignore_eos": True})
            assert reply.choices[0].message.content == "".join(local.stream("What is it?", [image], adapter=adapter,
                                                                            **KW)), model
        for bad in ("a:x", "c:0.5", "a:0.5+a:1"):
            with pytest.raises(openai.NotFoundError, match="mix"):
                client.chat.completions.create(model=bad, messages=messages, max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="finite"):
            client.chat.completions.create(model="a:nan", messages=messages, max_tokens=2)
        if Path(CHROMIUM).exists():  # the web chatbot's adapter picker, in a real browser, on the same server
            _ui_answers_with_the_picked_adapter(server, client)
    finally:
        server.stop()


CHROMIUM = "/usr/bin/chromium"


def _ui_answers_with_the_picked_adapter(server: Server, client: openai.OpenAI) -> None:
    from playwright.sync_api import sync_playwright

    def api(model: str) -> str:
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}],
                                              max_tokens=6, temperature=0,
                                              extra_body={"repetition_penalty": 1.0}).choices[0].message.content

    want, base = api("b"), api("tiny")
    assert want != base  # else picking the adapter could not be seen
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server.url + "/ui/")
        page.get_by_text("Generation settings").click()
        for label, value in (("max new tokens", "6"), ("repetition penalty", "1")):
            set_number(page, label, value)
        picker = page.get_by_label("adapter")
        picker.click()
        page.get_by_role("option", name="b", exact=True).click()
        assert picker.input_value() == "b"
        page.locator("#message textarea").fill("Hello there")
        page.locator("#message textarea").press("Enter")
        page.wait_for_function("document.querySelector('#stats').innerText.includes('tokens/s')", timeout=30_000)
        shown = page.locator("#chat .message-row.bot-row").all_inner_texts()[-1].strip()
        browser.close()
    assert _plain(shown) == _plain(want)


def _plain(text: str) -> str:
    """Text as the chat shows it: the Chatbot renders Markdown, so emphasis marks and the like vanish."""
    return "".join(ch for ch in text if ch not in "*_`~#\\\ufffd" and not ch.isspace())


def test_hf_checkpoint_with_adapters_is_exported_with_slots_once(tiny_llava: Path, adapters: dict[str, Path],
                                                                  red_image: Image.Image) -> None:
    """``Pipeline(hf_dir, adapters=...)``: the cached INT4 export gets LoRA slots (NNCF leaves the factors alone)."""
    pipe = Pipeline(tiny_llava, adapters=adapters)
    assert pipe.backend_name == "openvino" and pipe.model_dir.name.split("-")[-2] == "lora"
    answers = {str(spec): pipe.generate("Hi", [red_image], adapter=spec, **KW).token_ids
               for spec in (None, "a", "b", {"a": 0.5, "b": 0.5})}
    assert len({tuple(ids) for ids in answers.values()}) == 4
    assert Pipeline(tiny_llava, adapters=adapters).model_dir == pipe.model_dir  # cached, not exported again
