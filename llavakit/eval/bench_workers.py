"""Subprocess entry points for ``llavakit bench``: one engine (or one preparation step) per process.

Why subprocesses: each engine's peak resident memory is only meaningful in a
process that ran nothing else, and a crash or a hang in one peer must not take
the whole benchmark down. The parent (:mod:`llavakit.eval.bench`) writes a JSON
spec, runs

    python -m llavakit.eval.bench_workers TASK SPEC.json RESULT.json

and reads the result back. A worker that fails writes ``{"error": ...}``.

Every engine sees the same work (:func:`workload`): a warm-up generation, then
per repeat one *cold* request (an image and a question no engine has seen in
this process), one *warm* request (that same image and question again) and one
*follow-up* (that same image with a new question: what a user asking several
things about one picture sends; an engine can reuse the image's features and the
cached prefix up to the end of the image, but not the question).
Times are wall-clock from the call to the first generated token (TTFT, image
preprocessing and tokenization included) and decode tokens/s over the tokens
after the first. Engines that report their own figures have those recorded
beside ours.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

QUESTIONS = (
    "What is in this picture?",
    "Describe the colours you can see in the image.",
    "Is there any text written in this photo?",
    "How many objects are visible here, roughly?",
    "What mood does this image convey to you?",
    "Which part of the picture is the brightest?",
    "Could this image have been taken outdoors?",
    "Describe the texture of the surface shown.",
    "What would be a good title for this image?",
    "Is the picture noisy or clean, and why?",
    "Name three things this image reminds you of.",
    "Where would you hang this picture in a house?",
)


# --- shared workload -------------------------------------------------------------------------
def bench_image(index: int, size: tuple[int, int] = (320, 240)):
    """A new picture per index: a random solid colour plus noise and a random rectangle (PIL, RGB)."""
    from PIL import Image

    rng = np.random.default_rng(1000 + index)
    w, h = size
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 40, size=(h, w, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)  # (H, W, 3)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    pixels[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, size=3)
    return Image.fromarray(pixels)


def question(index: int) -> str:
    text = QUESTIONS[index % len(QUESTIONS)]
    return text if index < len(QUESTIONS) else f"{text} (Question {index}.)"


#: Question index offset of a follow-up: a question no other request of the run asks.
FOLLOWUP_OFFSET = 500
#: Request kinds that are summarized (medians per kind); the warm-up is recorded but not summarized.
KINDS = ("cold", "warm", "followup")


def workload(repeats: int) -> list[dict]:
    """The requests every engine runs, in order: warm-up, then (cold, warm, follow-up) per repeat."""
    steps = [{"kind": "warmup", "index": 0}]
    for r in range(repeats):
        steps += [{"kind": kind, "index": r + 1} for kind in KINDS]
    return steps


def request_for(step: dict) -> tuple[Any, str]:
    """The (image, question) of a workload step: a follow-up keeps its repeat's image with a new question."""
    offset = FOLLOWUP_OFFSET if step["kind"] == "followup" else 0
    return bench_image(step["index"]), question(step["index"] + offset)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


WARMUP_TOKENS = 8


def tokens_for(step: dict, max_new_tokens: int) -> int:
    """The warm-up only has to run every kernel once: a few tokens; measured requests get the full budget."""
    return min(WARMUP_TOKENS, max_new_tokens) if step["kind"] == "warmup" else max_new_tokens


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB.

    VmHWM, not ``getrusage().ru_maxrss``: the latter survives ``exec`` on Linux, so a worker
    started from a big parent would report the parent's peak.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def summarize(runs: list[dict]) -> dict:
    """Medians per request kind (cold, warm, follow-up); the warm-up is recorded but not summarized."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        picked = [r for r in runs if r["kind"] == kind]
        if not picked:
            continue
        for key in picked[0]:
            if isinstance(picked[0][key], (int, float)) and not isinstance(picked[0][key], bool) and key != "index":
                out[f"{key}_{kind}"] = _median([r[key] for r in picked])
    decode = [r["decode_tokens_per_s"] for r in runs if r["kind"] != "warmup" and r.get("decode_tokens_per_s")]
    out["decode_tokens_per_s"] = _median(decode)
    return out


# --- preparation -------------------------------------------------------------------------------
#: The tiny shape of ``--quick`` (tests): 4 small layers, 224-px images in 32-px patches (49 image tokens).
QUICK_LM = {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": None}
QUICK_VISION = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "image_size": 224, "patch_size": 32}


def shapes(name: str):
    """(LMShape, VisionShape) of a benchmark shape name: "bench-1b" (DESIGN.md) or "quick"."""
    from llavakit.checkpoints.random_parts import (
        BENCH_1B_LM,
        BENCH_1B_VISION,
        LMShape,
        VisionShape,
    )

    if name == "bench-1b":
        return BENCH_1B_LM, BENCH_1B_VISION
    if name == "quick":
        return LMShape(**QUICK_LM), VisionShape(**QUICK_VISION)
    raise ValueError(f"unknown benchmark shape {name!r}")


def task_build(spec: dict) -> dict:
    """Random vision tower + random LM (HF format) → a LLaVA checkpoint; each step skipped when present."""
    from dataclasses import asdict

    root = Path(spec["root"])
    record = root / "shape.json"  # written last: its presence means every part is there
    if record.is_file() and all((root / part / "config.json").is_file() for part in ("lm", "vision", "llava")):
        return {**json.loads(record.read_text()), "cached": True}
    lm_shape, vision_shape = shapes(spec["shape"])
    from transformers.utils import logging as hf_logging

    from llavakit.checkpoints.atomic import atomic_directory
    from llavakit.checkpoints.build import build_llava
    from llavakit.checkpoints.random_parts import make_random_lm, make_random_vision

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    timings = {}
    start = time.perf_counter()
    if not (root / "lm" / "config.json").is_file():
        with atomic_directory(root / "lm") as tmp:
            make_random_lm("llama", tmp, lm_shape)
    if not (root / "vision" / "config.json").is_file():
        with atomic_directory(root / "vision") as tmp:
            make_random_vision("clip", tmp, vision_shape)
    timings["parts_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if not (root / "llava" / "config.json").is_file():
        build_llava(root / "vision", root / "lm", root / "llava", force=True)
    timings["build_s"] = time.perf_counter() - start
    vocab = json.loads((root / "lm" / "config.json").read_text())["vocab_size"]
    result = {"llava": str(root / "llava"), "lm": str(root / "lm"), "lm_shape": asdict(lm_shape),
              "vision_shape": asdict(vision_shape), "lm_vocab": vocab}
    record.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, **timings}


def task_export(spec: dict) -> dict:
    """Export the LLaVA with the given CompressionOptions fields (skipped when the directory is complete)."""
    from llavakit.export import layout

    out = Path(spec["out"])
    start = time.perf_counter()
    if not layout.is_exported(out):  # torch, transformers and NNCF only when there is work to do
        from transformers.utils import logging as hf_logging

        from llavakit.export.compress import CompressionOptions
        from llavakit.export.exporter import export_openvino

        hf_logging.set_verbosity_error()
        export_openvino(spec["source"], out, CompressionOptions(**spec["options"]), force=True, show_progress=False)
    report = json.loads((out / layout.EXPORT_REPORT).read_text())
    return {"export_dir": str(out), "seconds": time.perf_counter() - start, "report": report,
            "lm_weights": lm_weight_bytes(out / layout.LANGUAGE_MODEL)}


_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Concat"}


def lm_weight_bytes(xml_path: Path) -> dict:
    """Bytes of weights one decode step reads from the language-model IR.

    Every constant is read once per token except tables that are *gathered* (an
    embedding: only the rows of the current token are touched). A constant's
    use is found by following its consumers through the decompression ops
    (Convert, Subtract, Multiply, Reshape...) to the op that uses the weight.
    The LM head (the MatMul that makes ``logits``) is reported on its own.
    """
    import openvino as ov

    model = ov.Core().read_model(xml_path)
    head_consts = _lm_head_constants(model)
    streamed = gathered = head = 0
    by_type: dict[str, int] = {}
    head_parts: list[tuple[int, str]] = []
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        nbytes = int(op.get_byte_size())
        if nbytes >= 1 << 20 and _ends_in_gather(op):
            gathered += nbytes
            continue
        streamed += nbytes
        etype = op.get_element_type().get_type_name()
        by_type[etype] = by_type.get(etype, 0) + nbytes
        if op.get_friendly_name() in head_consts:
            head += nbytes
            head_parts.append((nbytes, etype))
    return {"streamed_bytes": streamed, "gathered_bytes": gathered, "lm_head_bytes": head,
            "lm_head_weight_type": max(head_parts)[1] if head_parts else None, "streamed_bytes_by_type": by_type,
            "bin_bytes": xml_path.with_suffix(".bin").stat().st_size}


def _ends_in_gather(const) -> bool:
    frontier, seen = [const.output(0)], set()
    while frontier:
        port = frontier.pop()
        for target in port.get_target_inputs():
            node = target.get_node()
            if node.get_friendly_name() in seen:
                continue
            seen.add(node.get_friendly_name())
            kind = node.get_type_name()
            if kind == "Gather" and target.get_index() == 0:
                return True
            if kind in _PASS_THROUGH:
                frontier.extend(node.outputs())
    return False


def _lm_head_constants(model) -> set[str]:
    """Friendly names of the constants that feed the MatMul producing ``logits``."""
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul" and node.get_input_size() > 0:
        node = node.input_value(0).get_node()
    names, frontier = set(), [node.input_value(1).get_node()] if node.get_type_name() == "MatMul" else []
    while frontier:
        current = frontier.pop()
        if current.get_type_name() == "Constant":
            names.add(current.get_friendly_name())
        elif current.get_type_name() in _PASS_THROUGH:
            frontier.extend(v.get_node() for v in current.input_values())
    return names


def task_bandwidth(spec: dict) -> dict:
    """Memory read bandwidth: reduce a large array with numpy, on one thread and split over all cores.

    Three reductions, because a plain float32 ``sum`` (pairwise summation) is partly
    compute-bound on some CPUs and under-reports: float32 sum, int64 sum and float32
    max over the same bytes. The best pass of any is the machine's read bandwidth.
    """
    import threading

    size_gb = float(spec.get("size_gb", 1.5))
    passes = int(spec.get("passes", 5))
    threads = int(spec.get("threads", os.cpu_count() or 1))
    data = np.ones(int(size_gb * 1e9) // 8, dtype=np.float64)  # pages touched: really in memory
    nbytes = data.nbytes
    kernels = {
        "float32 sum": (np.add.reduce, data.view(np.float32)),
        "int64 sum": (np.add.reduce, data.view(np.int64)),
        "float32 max": (np.maximum.reduce, data.view(np.float32)),
    }

    def measure(fn, array, n_threads: int) -> float:
        chunks = np.array_split(array, n_threads)
        workers = [threading.Thread(target=fn, args=(c,)) for c in chunks]  # numpy reductions release the GIL
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return nbytes / (time.perf_counter() - start) / 1e9

    results: dict[str, dict] = {}
    for name, (fn, array) in kernels.items():
        fn(array)  # warm
        for n_threads in sorted({1, threads}):
            runs = [measure(fn, array, n_threads) for _ in range(passes)]
            results[f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}"] = {
                "gbps": runs, "median_gbps": float(np.median(runs)), "best_gbps": float(max(runs))}
    single = [r["median_gbps"] for k, r in results.items() if k.endswith(" 1 thread")]
    multi = [r["median_gbps"] for k, r in results.items() if not k.endswith(" 1 thread")] or single
    return {"array_gb": nbytes / 1e9, "passes": passes, "threads": threads, "kernels": results,
            "single_thread_gbps_median": max(single), "all_threads_gbps_median": max(multi),
            "best_gbps": max(r["best_gbps"] for r in results.values())}


# --- engines on the VLM workload -------------------------------------------------------------
def task_llavakit(spec: dict) -> dict:
    """llavakit's Pipeline on the exported directory."""
    from llavakit import Pipeline

    start = time.perf_counter()
    # explicit backend: "auto" would follow a recorded per-machine choice and blur the rows
    pipe = Pipeline(spec["export_dir"], backend=spec.get("backend", "openvino"),
                    properties=spec.get("properties") or None)
    load_s = time.perf_counter() - start
    rss_loaded = rss_mb()
    runs = []
    for step in workload(spec["repeats"]):
        image, text = request_for(step)
        begin = time.perf_counter()
        generation = pipe.stream(text, images=[image], max_new_tokens=tokens_for(step, spec["max_new_tokens"]),
                                 ignore_eos=True)  # random weights may pick eos early: a fixed token count
        prepared = time.perf_counter()
        result = generation.finish()
        m = result.metrics
        runs.append({
            **step,
            "ttft_s": (prepared - begin) + m.time_to_first_token_s,
            "engine_ttft_s": m.time_to_first_token_s,  # llavakit's own figure: from prefill start (prompt prepared)
            "decode_tokens_per_s": m.decode_tokens_per_s,
            "generated_tokens": m.generated_tokens,
            "prompt_tokens": m.prompt_tokens,
            "cached_tokens": m.cached_tokens,
            "image_encode_s": m.image_encode_s,
            "total_s": time.perf_counter() - begin,
        })
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(), "runs": runs,
            **summarize(runs)}


def task_genai(spec: dict) -> dict:
    """openvino_genai.VLMPipeline on the same exported directory, PA or SDPA attention backend."""
    import openvino as ov
    import openvino_genai as genai

    props = {"ATTENTION_BACKEND": spec["attention_backend"], **(spec.get("properties") or {})}
    start = time.perf_counter()
    pipe = genai.VLMPipeline(spec["export_dir"], "CPU", **props)
    load_s = time.perf_counter() - start
    rss_loaded = rss_mb()
    runs = []
    for step in workload(spec["repeats"]):
        image, text = request_for(step)
        config = genai.GenerationConfig()
        config.max_new_tokens = tokens_for(step, spec["max_new_tokens"])
        config.do_sample = False
        config.ignore_eos = True
        clock = _TokenClock(genai)
        begin = time.perf_counter()
        tensor = ov.Tensor(np.asarray(image)[None])  # (1, H, W, 3) uint8
        res = pipe.generate(text, images=[tensor], generation_config=config, streamer=clock.streamer)
        end = time.perf_counter()
        first = clock.times[:1]
        pm = res.perf_metrics
        generated = int(pm.get_num_generated_tokens())
        engine_ttft = pm.get_ttft().mean / 1000
        runs.append({
            **step,
            "ttft_s": (first[0] - begin) if first else engine_ttft,
            "engine_ttft_s": engine_ttft,
            "decode_tokens_per_s": float(pm.get_throughput().mean),
            "wall_decode_tokens_per_s": (generated - 1) / (end - first[0]) if first and generated > 1 else None,
            "generated_tokens": generated,
            "prompt_tokens": int(pm.get_num_input_tokens()),
            "total_s": end - begin,
        })
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(), "runs": runs,
            **summarize(runs)}


class _TokenClock:
    """A GenAI token streamer that only notes when each token arrives (no detokenization)."""

    def __init__(self, genai) -> None:
        self.times: list[float] = []
        times = self.times

        class Streamer(genai.StreamerBase):
            def write(self, token):
                times.append(time.perf_counter())
                return genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        self.streamer = Streamer()


def task_transformers(spec: dict) -> dict:
    """transformers ``generate`` on the HF checkpoint (fp32 or bf16), timed with a streamer."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.generation.streamers import BaseStreamer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(spec["hf_dir"], dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(spec["hf_dir"])
    load_s = time.perf_counter() - start
    rss_loaded = rss_mb()

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.calls: list[float] = []

        def put(self, value) -> None:  # first call: the prompt; then one call per new token
            self.calls.append(time.perf_counter())

        def end(self) -> None:
            pass

    runs = []
    for step in workload(spec["repeats"]):
        if step["kind"] in ("warm", "followup") and not spec.get("warm", False):
            continue  # transformers keeps nothing between calls: warm and follow-up equal cold
        n = tokens_for(step, spec["max_new_tokens"])
        image, text = request_for(step)
        clock = Clock()
        begin = time.perf_counter()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        end = time.perf_counter()
        generated = int(out.shape[1] - inputs["input_ids"].shape[1])
        token_times = clock.calls[1:]
        runs.append({
            **step,
            "ttft_s": token_times[0] - begin,
            "decode_tokens_per_s": (generated - 1) / (end - token_times[0]) if generated > 1 else None,
            "generated_tokens": generated,
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "total_s": end - begin,
        })
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(), "runs": runs,
            "torch_threads": torch.get_num_threads(), **summarize(runs)}


# --- the language model alone, on fixed token ids ------------------------------------------------
def task_llavakit_lm(spec: dict) -> dict:
    """llavakit's engine fed ``prompt_ids`` directly (no chat template, no image): prefill + greedy decode.

    ``spec["backend"] == "llamacpp"`` runs the llama.cpp LM backend instead of the OpenVINO one, so its
    decode can be set against llama.cpp's own on exactly the peer's workload.
    """
    from llavakit.runtime.ov_backend import OpenVINOBackend, OVPrompt

    start = time.perf_counter()
    if spec.get("backend") == "llamacpp":
        from llavakit.runtime.llamacpp_backend import LlamaCppBackend

        backend = LlamaCppBackend(Path(spec["export_dir"]))
    else:
        backend = OpenVINOBackend(Path(spec["export_dir"]), properties=spec.get("properties") or None)
    load_s = time.perf_counter() - start
    ids = [int(i) for i in spec["prompt_ids"]]
    n_decode = int(spec["n_decode"])
    runs = []
    for r in range(int(spec["repeats"]) + 1):  # the first is a warm-up
        backend.reset()
        prompt = OVPrompt(token_ids=list(ids), images=[], digests=[], keys=list(ids))
        t0 = time.perf_counter()
        logits = backend.prefill(prompt)
        t1 = time.perf_counter()
        for _ in range(n_decode - 1):
            logits = backend.decode_one(int(np.argmax(logits)))
        t2 = time.perf_counter()
        runs.append({"kind": "warmup" if r == 0 else "cold", "index": r, "prefill_s": t1 - t0,
                     "prefill_tokens_per_s": len(ids) / (t1 - t0),
                     "decode_tokens_per_s": (n_decode - 1) / (t2 - t1) if n_decode > 1 else None})
    measured = [r for r in runs if r["kind"] != "warmup"]
    return {"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "prompt_tokens": len(ids), "n_decode": n_decode,
            "runs": runs, "prefill_s": _median([r["prefill_s"] for r in measured]),
            "prefill_tokens_per_s": _median([r["prefill_tokens_per_s"] for r in measured]),
            "decode_tokens_per_s": _median([r["decode_tokens_per_s"] for r in measured])}


def task_gguf(spec: dict) -> dict:
    """The LM converted with llama.cpp's converter (f16 GGUF) and quantized to each of ``quants``; cached."""
    from llavakit.eval import llamacpp_peer as peer

    work = Path(spec["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "lm-f16.gguf"
    start = time.perf_counter()
    if not f16.is_file():
        peer.convert_hf_to_gguf(spec["lm_dir"], f16, "f16")
    files = {}
    for quant in spec["quants"]:
        quantized = work / f"lm-{quant}.gguf"
        if not quantized.is_file():
            peer.quantize_gguf(f16, quantized, quant)
        files[quant] = {"path": str(quantized), "bytes": quantized.stat().st_size,
                        "streamed_bytes": gguf_weight_bytes(quantized)}
    return {"files": files, "seconds": time.perf_counter() - start}


def task_llamacpp(spec: dict) -> dict:
    """llama.cpp (through ``llavakit.eval.llamacpp_peer``) on the GGUF that ``task_gguf`` made."""
    from llavakit.eval import llamacpp_peer as peer

    quantized = Path(spec["work_dir"]) / f"lm-{spec['quant']}.gguf"
    # llama.cpp's n_decode counts the steps after the prefill's token; ours counts every generated token.
    res = peer.bench_llamacpp(quantized, [int(i) for i in spec["prompt_ids"]], int(spec["n_decode"]) - 1,
                              int(spec["n_threads"]), repeats=int(spec["repeats"]), warmup=True)
    res.pop("generated_ids", None)
    return {**res, "prefill_tokens_per_s": res["prefill_tps"], "decode_tokens_per_s": res["decode_tps"],
            "peak_rss_mb": peak_rss_mb(), "streamed_bytes": gguf_weight_bytes(quantized)}


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of GGUF tensors one decode step reads: all but the token-embedding table (gathered)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return int(sum(t.n_bytes for t in reader.tensors if t.name != "token_embd.weight"))


def task_lm_gguf(spec: dict) -> dict:
    """The exported directory plus the LLaVA's own LM as a llama.cpp GGUF (``export --lm-gguf``), cached.

    The OpenVINO files are symlinked from ``export_dir`` (no second OpenVINO export), the GGUF is
    made from the LLaVA checkpoint itself by :func:`llavakit.export.lm_gguf.export_lm_gguf`.
    """
    from llavakit.export import layout
    from llavakit.export.lm_gguf import gguf_name

    src, out = Path(spec["export_dir"]), Path(spec["out"])
    target = out / gguf_name(spec["qtype"])
    start = time.perf_counter()
    if not target.is_file():
        import torch  # noqa: F401  (the LLaVA checkpoint is loaded with transformers)
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from llavakit.export.lm_gguf import export_lm_gguf

        hf_logging.set_verbosity_error()
        out.mkdir(parents=True, exist_ok=True)
        model = AutoModelForImageTextToText.from_pretrained(spec["source"], dtype="float32").eval()
        export_lm_gguf(model, AutoTokenizer.from_pretrained(spec["source"]), out, spec["qtype"])
        del model
    for f in src.iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    assert layout.is_exported(out)
    return {"export_dir": str(out), "gguf": str(target), "gguf_bytes": target.stat().st_size,
            "streamed_bytes": gguf_weight_bytes(target), "seconds": time.perf_counter() - start}


#: Prompts and steps of the SmolLM2 top-1 agreement check (as tests/test_quantized.py).
AGREEMENT_PROMPTS = (
    "What is the capital of France?", "Name three colours of the rainbow.", "Write one sentence about the sea.",
    "What is 12 plus 7?", "Who wrote Romeo and Juliet?", "Give me a synonym for happy.", "What do bees make?",
    "How many days are in a week?", "Explain in two sentences how plants make food.",
    "Write a short poem about the moon.", "List four animals that live in the ocean.",
    "What is the boiling point of water in Celsius?",
)
AGREEMENT_STEPS = 16


def teacher_forced_agreement(backend, references: list[list[int]]) -> float:
    """Share of steps where ``backend``'s argmax equals the reference token, fed the reference prefix."""
    from llavakit.runtime.prompt import user_content

    hits = total = 0
    for prompt, ref in zip(AGREEMENT_PROMPTS, references):
        backend.reset()
        logits = backend.prefill(backend.prepare([{"role": "user", "content": user_content(prompt, 0)}], []))
        for token in ref:
            hits += int(np.argmax(logits)) == token
            total += 1
            logits = backend.decode_one(token)
    return hits / total


def task_agreement(spec: dict) -> dict:
    """Top-1 agreement with fp32 transformers on a real LM (the demo LLaVA's SmolLM2-135M-Instruct).

    One export carries both quantized LMs: the OpenVINO INT4 IR (llavakit's default compression)
    and llama.cpp GGUFs made from the same checkpoint, so the two backends are scored on equal terms.
    Export levers (``spec["levers"]``: CompressionOptions fields) are exported from the same checkpoint and
    scored too, so a lever's decode speed on bench-1b can be read beside what it costs in agreement.
    """
    from llavakit import Pipeline
    from llavakit.checkpoints.demo import ensure_demo_model
    from llavakit.export import layout
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino
    from llavakit.export.lm_gguf import gguf_name

    start = time.perf_counter()
    demo = ensure_demo_model()
    out = Path(spec["work_dir"]) / "agreement-export"
    qtypes = [q.lower() for q in spec["qtypes"]]
    if not layout.is_exported(out) or not all((out / gguf_name(q)).is_file() for q in qtypes):
        export_openvino(demo, out, CompressionOptions(weights="int4"), force=True, show_progress=False,
                        lm_gguf=qtypes[0] if qtypes else None)
        if len(qtypes) > 1:  # the other GGUF types from the same checkpoint
            from transformers import AutoModelForImageTextToText, AutoTokenizer

            from llavakit.export.lm_gguf import export_lm_gguf

            model = AutoModelForImageTextToText.from_pretrained(demo, dtype="float32").eval()
            for q in qtypes[1:]:
                export_lm_gguf(model, AutoTokenizer.from_pretrained(demo), out, q)
            del model
    reference = Pipeline(demo, backend="torch")
    refs = [reference.generate(p, max_new_tokens=AGREEMENT_STEPS).token_ids for p in AGREEMENT_PROMPTS]
    del reference
    scores = {"openvino INT4 (llavakit default export)": teacher_forced_agreement(
        Pipeline(out, backend="openvino").backend, refs)}
    for lever, options in spec.get("levers", {}).items():
        lever_out = Path(spec["work_dir"]) / f"agreement-export-{lever}"
        if not layout.is_exported(lever_out):
            export_openvino(demo, lever_out, CompressionOptions(**options), force=True, show_progress=False)
        scores[f"openvino lever {lever}"] = teacher_forced_agreement(Pipeline(lever_out, backend="openvino").backend,
                                                                     refs)
    for q in qtypes:
        pipe = Pipeline(out, backend="llamacpp", gguf=q)
        scores[f"llama.cpp {q.upper()}"] = teacher_forced_agreement(pipe.backend, refs)
        pipe.backend.close()
    return {"model": "SmolLM2-135M-Instruct (demo LLaVA LM)", "prompts": len(AGREEMENT_PROMPTS),
            "steps": sum(len(r) for r in refs), "agreement": scores, "seconds": time.perf_counter() - start}


TASKS = {
    "lm_gguf": task_lm_gguf,
    "agreement": task_agreement,
    "build": task_build,
    "export": task_export,
    "bandwidth": task_bandwidth,
    "llavakit": task_llavakit,
    "genai": task_genai,
    "transformers": task_transformers,
    "llavakit_lm": task_llavakit_lm,
    "gguf": task_gguf,
    "llamacpp": task_llamacpp,
}


def main(argv: list[str]) -> int:
    task, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    load_before = os.getloadavg()[0]
    try:
        result = TASKS[task](spec)
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which keeps going
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        code = 1
    result["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    Path(result_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
