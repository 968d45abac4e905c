"""Shared fixtures: tiny random checkpoints written once per test session.

No hub here, so every test model is built with transformers' own config
classes by :mod:`llavakit.checkpoints.random_parts`, saved in the plain HF
layout, and loaded back through llavakit's real loading code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.random_parts import make_random_lm, make_random_vision

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def parts(tmp_path_factory: pytest.TempPathFactory):
    """Factory for tiny source parts, cached per session: parts('lm', 'qwen2'), parts('vision', 'clip')."""
    root = tmp_path_factory.mktemp("parts")
    made: dict[tuple[str, str], Path] = {}

    def get(kind: str, name: str) -> Path:
        if (kind, name) not in made:
            target = root / f"{kind}-{name}"
            if kind == "lm":
                made[(kind, name)] = make_random_lm(name, target)
            elif name == "clip-full":
                made[(kind, name)] = make_random_vision("clip", target, full_model=True)
            else:
                made[(kind, name)] = make_random_vision(name, target)
        return made[(kind, name)]

    return get


@pytest.fixture(scope="session")
def tiny_llava(parts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA (random CLIP + random Llama) built once for the session."""
    out = tmp_path_factory.mktemp("llava") / "tiny-llava"
    return build_llava(parts("vision", "clip"), parts("lm", "llama"), out)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_llava: Path):
    from llavakit import Pipeline

    return Pipeline(tiny_llava, backend="torch")


@pytest.fixture()
def red_image() -> Image.Image:
    return Image.new("RGB", (40, 30), (200, 30, 30))


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One llavakit cache for the session (``$LLAVAKIT_CACHE``): SmolLM2 converted and models exported once."""
    path = tmp_path_factory.mktemp("llavakit-cache")
    os.environ["LLAVAKIT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA exported to OpenVINO at fp32 (exact parity with transformers is expected)."""
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    options = CompressionOptions(weights="fp32", vision="fp32", text_embeddings="fp32")
    return export_openvino(tiny_llava, tmp_path_factory.mktemp("ov") / "tiny-ov", options, show_progress=False)


@pytest.fixture(scope="session")
def ov_pipeline(tiny_export: Path):
    from llavakit import Pipeline

    return Pipeline(tiny_export, precise=True)


@pytest.fixture()
def two_train_samples(tmp_path: Path) -> Path:
    """Two shapes-world training samples as one LLaVA JSON with absolute image paths: a tiny training run's data."""
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    generate_shapes(tmp_path / "shapes", ShapesConfig(train=2, val=0, test=0, image_size=32, seed=1))
    rows = json.loads((tmp_path / "shapes" / "train.json").read_text())
    for row in rows:
        row["image"] = str(tmp_path / "shapes" / row["image"])
    data = tmp_path / "two.json"
    data.write_text(json.dumps(rows))
    return data


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test (tiny models on 2 shared cores), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_processor(parts):  # noqa: ANN201 (a transformers LlavaProcessor)
    """SmolLM2-135M-Instruct's real tokenizer and chat template (from the GGUF), made multimodal."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from llavakit.checkpoints.gguf_lm import smollm2_gguf_path, tokenizer_from_gguf
    from llavakit.data.chat_templates import IMAGE_TOKEN, make_multimodal

    tokenizer = tokenizer_from_gguf(smollm2_gguf_path())
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    template = make_multimodal(tokenizer.chat_template)
    tokenizer.chat_template = template
    image_processor = CLIPImageProcessor.from_pretrained(parts("vision", "clip"))
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template)


FORK_PROMPTS = [("Describe it.", (200, 30, 30)), ("What shape?", (30, 200, 30)), ("Colour?", (30, 30, 200))]


@pytest.fixture(scope="session")
def decode_forks():
    """``decode_forks(reference, pipe, n, max_new_tokens)`` -> (expected token ids, forks, results): the first n
    FORK_PROMPTS answered by ``reference`` one by one, then by n ``pipe.fork()``s at once from threads (how the
    server's slots run). Serving, speculative and EAGLE tests compare the two."""
    import threading

    def run(pipe, text: str, color: tuple[int, int, int], max_new_tokens: int):  # noqa: ANN001, ANN202
        return pipe.generate(text, images=[Image.new("RGB", (40, 30), color)], max_new_tokens=max_new_tokens,
                             ignore_eos=True)

    def decode(reference, pipe, n: int, max_new_tokens: int):  # noqa: ANN001, ANN202
        prompts = FORK_PROMPTS[:n]
        expected = [run(reference, text, color, max_new_tokens).token_ids for text, color in prompts]
        forks = [pipe.fork() for _ in prompts]
        results: list = [None] * n
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(forks[i], *prompts[i],
                                                                                  max_new_tokens)))
                   for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return expected, forks, results

    return decode


@pytest.fixture(scope="module")
def plain(tiny_export: Path):
    """The tiny export without a draft at f32 settings: the greedy reference of the speculative tests."""
    from llavakit import Pipeline

    return Pipeline(tiny_export, precise=True)
