"""The llama.cpp LM backend: vision on OpenVINO, LM from the export's GGUF, fed image embeddings.

Needs the native llama-cpp-python build (benchmarks/LLAMACPP.md); skipped without it.
The tiny fp32 LLaVA is exported with an F32 GGUF, so llama.cpp must reproduce the
OpenVINO fp32 engine and transformers token for token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from llavakit import Pipeline
from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.runtime import backend_choice

N_STEPS = 24


@pytest.fixture(scope="module")
def gguf_export(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    options = CompressionOptions(weights="fp32", vision="fp32", text_embeddings="fp32")
    out = tmp_path_factory.mktemp("lc") / "tiny-ov-gguf"
    return export_openvino(tiny_llava, out, options, show_progress=False, lm_gguf="f32")


@pytest.fixture(scope="module")
def lc_pipeline(gguf_export: Path) -> Pipeline:
    return Pipeline(gguf_export, backend="llamacpp", precise=True)


def test_export_writes_gguf_beside_the_ir(gguf_export: Path) -> None:
    assert (gguf_export / "openvino_language_model.F32.gguf").is_file()
    report = json.loads((gguf_export / "llavakit_export.json").read_text())
    assert report["parts"]["language model (llama.cpp)"]["precision"] == "llama.cpp F32"


def test_greedy_tokens_equal_openvino_and_transformers(lc_pipeline, gguf_export, tiny_pipeline, red_image) -> None:
    ov = Pipeline(gguf_export, backend="openvino", precise=True)
    kw = {"max_new_tokens": N_STEPS, "ignore_eos": True}
    ours = lc_pipeline.generate("What is in the picture?", images=[red_image], **kw)
    assert lc_pipeline.backend.name == "llamacpp"
    assert ours.metrics.prompt_tokens > lc_pipeline.backend.features_per_image() > 1  # image features in the prompt
    assert ours.token_ids == ov.generate("What is in the picture?", images=[red_image], **kw).token_ids
    torch_ids = tiny_pipeline.generate("What is in the picture?", images=[red_image], **kw).token_ids
    assert ours.token_ids == torch_ids
    # logits, not just argmax: one prefill each on the same prepared prompt
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    lc_pipeline.backend.reset()
    a = lc_pipeline.backend.prefill(lc_pipeline.backend.prepare(messages, [red_image]))
    b = ov.backend.prefill(ov.backend.prepare(messages, [red_image]))
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)


def test_kv_reuse_turn_two_equals_from_scratch(gguf_export, red_image) -> None:
    from PIL import Image

    kw = {"max_new_tokens": 12, "ignore_eos": True}
    pipe = Pipeline(gguf_export, backend="llamacpp", precise=True)
    chat = pipe.chat()
    chat.send("What colour is it?", images=[red_image], **kw)
    second = chat.send("And the shape?", **kw)
    assert second.metrics.cached_tokens > pipe.backend.features_per_image()  # turn 1 (image included) stayed in llama.cpp's KV cache
    assert second.metrics.image_encode_s == 0.0  # the image's features came from the cache
    fresh = Pipeline(gguf_export, backend="llamacpp", precise=True)
    scratch = fresh.stream_messages(chat.messages[:-1], chat.images, **kw).finish()
    assert scratch.metrics.cached_tokens == 0
    assert second.token_ids == scratch.token_ids
    # the same request again costs one position; a different image trims the cache and still agrees
    again = pipe.stream_messages(chat.messages[:-1], chat.images, **kw).finish()
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1 and again.token_ids == second.token_ids
    blue = Image.new("RGB", (30, 40), (20, 40, 220))
    reused = pipe.generate("What colour is it?", images=[blue], **kw)
    assert 0 < reused.metrics.cached_tokens < reused.metrics.prompt_tokens - 1
    fresh.backend.reset()
    assert reused.token_ids == fresh.generate("What colour is it?", images=[blue], **kw).token_ids


def test_missing_or_corrupt_gguf_is_a_clear_error(tiny_export: Path, gguf_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="--lm-gguf"):
        Pipeline(tiny_export, backend="llamacpp")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in gguf_export.iterdir():
        if not f.name.endswith(".gguf"):
            os.symlink(f, broken / f.name)
    (broken / "openvino_language_model.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="could not load"):
        Pipeline(broken, backend="llamacpp")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Pipeline(gguf_export, backend="llamacpp", gguf="q4_0")
    from llavakit.export.exporter import export_openvino

    with pytest.raises(LlavakitError, match="q4_k_m"):
        export_openvino(tiny_export, tmp_path / "never", lm_gguf="q3_bogus")
    assert not (tmp_path / "never").exists()


def test_auto_backend_follows_the_recorded_measurement(gguf_export: Path, tiny_export: Path, monkeypatch) -> None:
    monkeypatch.delenv(backend_choice.ENV, raising=False)
    backend_choice.choice_path().unlink(missing_ok=True)
    assert Pipeline(gguf_export).backend_name == "openvino"  # nothing measured: as before
    slow = {"decode_tokens_per_s": 10.0, "ttft_cold_s": 1.0}
    fast = {"decode_tokens_per_s": 20.0, "ttft_cold_s": 0.9}
    assert backend_choice.record_choice(slow, fast, "test")["backend"] == "llamacpp"
    assert Pipeline(gguf_export).backend_name == "llamacpp"
    assert Pipeline(tiny_export).backend_name == "openvino"  # no GGUF there
    assert backend_choice.record_choice(fast, slow, "test")["backend"] == "openvino"
    assert Pipeline(gguf_export).backend_name == "openvino"
    monkeypatch.setenv(backend_choice.ENV, "llamacpp")
    assert Pipeline(gguf_export).backend_name == "llamacpp"
    path = backend_choice.choice_path()
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "backend": "llamacpp", "machine": "another"}))
    monkeypatch.delenv(backend_choice.ENV)
    assert Pipeline(gguf_export).backend_name == "openvino"  # another machine's measurement does not count
    path.unlink()


def test_llamacpp_backend_imports_no_torch(gguf_export: Path) -> None:
    code = (
        "import sys\nfrom PIL import Image\nfrom llavakit import Pipeline\n"
        f"p = Pipeline({str(gguf_export)!r}, backend='llamacpp')\n"
        "p.generate('hi', images=[Image.new('RGB', (32, 32))], max_new_tokens=2)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_thread_count_from_the_environment(monkeypatch) -> None:
    from llavakit.runtime.llamacpp_backend import default_threads

    monkeypatch.setenv("LLAVAKIT_LLAMACPP_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("LLAVAKIT_LLAMACPP_THREADS", "two")
    with pytest.raises(LlavakitError, match="LLAVAKIT_LLAMACPP_THREADS"):
        default_threads()
    monkeypatch.delenv("LLAVAKIT_LLAMACPP_THREADS")
    assert default_threads() >= 1


def test_llamacpp_detokenizer_gives_the_openvino_text(lc_pipeline, gguf_export) -> None:
    """The backend detokenizes with llama.cpp's vocab; the text must be the OpenVINO detokenizer's."""
    ov = Pipeline(gguf_export, backend="openvino", precise=True)
    rng = np.random.default_rng(0)
    vocab = lc_pipeline.backend.n_vocab
    special = sorted(lc_pipeline.backend.eos_token_ids)
    cases = [[], special, [int(i) for i in rng.integers(0, vocab, 1)]]
    cases += [[int(i) for i in rng.integers(0, vocab, n)] for n in (2, 5, 17, 64)]
    cases += [special + [int(i) for i in rng.integers(0, vocab, 8)] + special]
    for ids in cases:
        assert lc_pipeline.backend.decode_text(ids) == ov.backend.decode_text(ids), ids


def test_amx_builds_load_without_the_crashing_amx_buffers(gguf_export: Path) -> None:
    """On a build with AMX kernels the backend loads with extra buffers off (llama.cpp#20824); else as llama.cpp does;
    the patched defaults never outlive the load."""
    import llama_cpp

    from llavakit.export.lm_gguf import find_ggufs
    from llavakit.runtime.llamacpp_amx import amx_build, load_llama

    original = llama_cpp.llama_cpp.llama_model_default_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        llm = load_llama(llama_cpp, model_path=str(find_ggufs(gguf_export)[0]), n_ctx=64, verbose=False)
    try:
        assert bool(llm.model_params.use_extra_bufts) is not amx_build(llama_cpp)
        assert llama_cpp.llama_cpp.llama_model_default_params is original
        llm.eval([1, 2, 3])  # the first decode: where an AMX build crashed
    finally:
        llm.close()


def test_eval_on_the_llamacpp_backend_answers_as_openvino(tiny_llava: Path, tmp_path: Path, monkeypatch) -> None:
    """``llavakit eval --backend llamacpp --weights f32``: exported once with an F32 GGUF, same answers as OpenVINO."""
    from typer.testing import CliRunner

    from llavakit.cli import app
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path / "cache"))
    generate_shapes(tmp_path / "s", ShapesConfig(train=0, val=0, test=6, seed=3, image_size=64))
    runner = CliRunner()
    reports = {}
    for backend, weights in (("llamacpp", "f32"), ("openvino", "fp32")):
        result = runner.invoke(app, ["eval", str(tiny_llava), "--data", str(tmp_path / "s" / "test.json"),
                                     "--backend", backend, "--weights", weights, "--limit", "4",
                                     "--max-new-tokens", "3", "--json", str(tmp_path / f"{backend}.json")])
        assert result.exit_code == 0, result.output
        reports[backend] = json.loads((tmp_path / f"{backend}.json").read_text())["predictions"]
    assert list(reports["llamacpp"]) == ["llamacpp-f32"]
    same = [a["prediction"] == b["prediction"]
            for a, b in zip(reports["llamacpp"]["llamacpp-f32"], reports["openvino"]["fp32"], strict=True)]
    assert sum(same) >= 3  # eval runs both at default numerics (not precise): a near-tie may flip on a random model
