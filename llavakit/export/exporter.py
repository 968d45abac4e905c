"""``llavakit export``: a HF-format LLaVA → an OpenVINO GenAI-layout directory, compressed.

What lands in the output directory (names in ``layout.py``):
- three IR models (vision embeddings, text embeddings, stateful language model),
- ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` (openvino-tokenizers),
- the json configs OpenVINO GenAI reads (config, generation config, the image
  processor as ``preprocessor_config.json``) and the HF tokenizer files, so
  ``openvino_genai.VLMPipeline(DIR, "CPU")`` loads it as well as llavakit does,
- ``llavakit_export.json``: each part's precision, size on disk and time taken.

Compression (``compress.py``) happens between conversion and saving, part by
part, so peak memory holds one part at a time next to the torch model. The
whole directory is written to a temporary sibling and swapped in at the end
(``checkpoints/atomic.py``): an interrupted export never leaves a directory
that later loads half-written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import openvino as ov
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from transformers import AutoModelForImageTextToText, AutoProcessor

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.export import layout, llava_next, lora
from llavakit.export.calibration import calibration_pixel_values, language_model_calibration
from llavakit.export.compress import (
    CompressionOptions,
    compress_language_model,
    compress_text_embeddings,
    describe_precision,
    quantize_vision,
    save_as_fp16,
)
from llavakit.export.convert import convert_language_model, convert_text_embeddings, convert_vision
from llavakit.export.declared import BUILD_INFO, SYNTHETIC, default_calibration

SUPPORTED = ("llava", "llava_next", "moe_llava")


def export_openvino(
    model: str | Path,
    out: str | Path,
    options: CompressionOptions | None = None,
    calibration: str | None = None,
    force: bool = False,
    show_progress: bool = True,
    lm_gguf: str | None = None,
    lora_slots: bool = False,
    lora_targets: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` to ``out`` and return ``out``; ``options.weights`` picks fp32/fp16/int8/int4.

    ``lm_gguf`` (e.g. "q4_k_m") also writes the LM as a llama.cpp GGUF for the llamacpp backend (``lm_gguf.py``).
    ``lora_slots`` adds runtime LoRA inputs (``export/lora.py``; ``lora_targets`` narrows them to Linears
    with those names): PEFT adapters then switch per request without recompiling.
    """
    options = options or CompressionOptions()
    if lora_slots and options.vision == "int8":
        raise LlavakitError("--lora-slots cannot go with vision='int8' (activation quantization would quantize the "
                            "projector's LoRA inputs): use --vision int8_weights, fp16 or fp32")
    if lm_gguf is not None:
        from llavakit.export.lm_gguf import check_gguf_type

        lm_gguf = check_gguf_type(lm_gguf)  # refuse a bad type before minutes of conversion
    out = Path(out)
    if out.exists() and not force:
        raise LlavakitError(f"output directory {out} already exists; pass --force to replace it")
    source = resolve_source(model, "model")
    hf_model, processor = _load(source)
    report: dict = {"source": str(model), "options": asdict(options), "parts": {}, "versions": _versions()}
    needs_images = options.vision == "int8" or options.data_aware
    if calibration is None and needs_images:
        calibration = default_calibration(source)  # e.g. "shapes" for nano and budget
    report["calibration"] = (calibration or SYNTHETIC) if needs_images else None
    pixels = calibration_pixel_values(calibration, processor, options.calibration_size) if needs_images else None
    if llava_next.is_llava_next(hf_model):  # tiles as the vision IR's batch; no data-aware LM calibration yet
        llava_next.refuse_data_aware(options)
        pixels = llava_next.tile_batches(pixels)
    lm_data = language_model_calibration(hf_model, processor, pixels) if options.data_aware else None
    lm_lora = lora.lm_slots(hf_model, lora_targets) if lora_slots else None
    vision_lora = lora.projector_slots(hf_model) if lora_slots else None
    if lm_lora is not None and lm_data:
        lm_data = [{**item, **lora.empty_factors(lm_lora)} for item in lm_data]  # rank 0: the base model
    steps = [
        ("vision embeddings", "vision", layout.VISION_EMBEDDINGS,
         lambda: quantize_vision(convert_vision(hf_model, vision_lora), options,
                                 pixels if options.vision == "int8" else None)),
        ("text embeddings", "text_embeddings", layout.TEXT_EMBEDDINGS,
         lambda: compress_text_embeddings(convert_text_embeddings(hf_model), options)),
        ("language model", "language", layout.LANGUAGE_MODEL,
         lambda: compress_language_model(convert_language_model(hf_model, lm_lora), options, lm_data)),
    ]
    with atomic_directory(out) as tmp, _progress(show_progress) as progress:
        task = progress.add_task("export", total=len(steps) + 1)
        for label, part, filename, make in steps:
            progress.update(task, description=f"converting {label}")
            start = time.perf_counter()
            ov_model = make()
            ov.save_model(ov_model, tmp / filename, compress_to_fp16=save_as_fp16(options, part))
            report["parts"][label] = {
                "file": filename,
                # what was written, not what was asked (+ the data-aware methods, which the graph cannot show)
                "precision": describe_precision(tmp / filename) + (options.method_note() if part == "language" else ""),
                "bytes": (tmp / filename).with_suffix(".bin").stat().st_size,
                "seconds": round(time.perf_counter() - start, 2),
            }
            del ov_model
            progress.advance(task)
        if lm_gguf is not None:
            from llavakit.export.lm_gguf import export_lm_gguf

            progress.update(task, description=f"language model as llama.cpp {lm_gguf.upper()} GGUF")
            report["parts"]["language model (llama.cpp)"] = export_lm_gguf(hf_model, processor.tokenizer, tmp, lm_gguf)
        progress.update(task, description="tokenizer and configs")
        start = time.perf_counter()
        _write_tokenizers(processor, tmp)
        _write_configs(source, processor, tmp)
        if llava_next.is_llava_next(hf_model):
            llava_next.write_image_newline(hf_model, tmp)
        if lm_lora is not None:
            lora.write_manifest(tmp, lm_lora, vision_lora)
        report["parts"]["tokenizer"] = {"file": layout.TOKENIZER, "seconds": round(time.perf_counter() - start, 2)}
        (tmp / layout.EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
        progress.advance(task)
    return out


def _load(source: Path):
    """The torch model in fp32 (tracing wants one dtype) and its processor."""
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") not in SUPPORTED:
        raise ModelLoadError(f"{source} holds a {config.get('model_type')!r} model; export supports {SUPPORTED}")
    import llavakit.models.moe_llava  # noqa: F401  (registers "moe_llava" with the Auto classes)

    model = AutoModelForImageTextToText.from_pretrained(source, dtype="float32").eval()
    return model, AutoProcessor.from_pretrained(source)


def _write_tokenizers(processor, out: Path) -> None:
    """openvino-tokenizers models plus the HF tokenizer files (GenAI reads the chat template from them)."""
    from openvino_tokenizers import convert_tokenizer

    tokenizer, detokenizer = convert_tokenizer(processor.tokenizer, with_detokenizer=True, skip_special_tokens=True)
    ov.save_model(tokenizer, out / layout.TOKENIZER)
    ov.save_model(detokenizer, out / layout.DETOKENIZER)
    processor.tokenizer.save_pretrained(out)


def _write_configs(source: Path, processor, out: Path) -> None:
    """config.json and generation_config.json as in the source; the image processor for GenAI."""
    for name in (layout.CONFIG, layout.GENERATION_CONFIG):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    image_processor = processor.image_processor.to_dict()
    image_processor["image_processor_type"] = type(processor.image_processor).__name__.removesuffix("Pil")
    (out / layout.PREPROCESSOR_CONFIG).write_text(json.dumps(image_processor, indent=2) + "\n")
    # the LLaVA processor settings, the template, and the model's declarations (its image fit: runtime/image_fit.py)
    for name in ("processor_config.json", layout.CHAT_TEMPLATE, BUILD_INFO):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def _versions() -> dict[str, str]:
    import nncf
    import openvino_tokenizers
    import transformers

    return {"openvino": ov.__version__, "nncf": nncf.__version__, "transformers": transformers.__version__,
            "openvino_tokenizers": openvino_tokenizers.__version__}


def _progress(enabled: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True)
