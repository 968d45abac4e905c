"""LLaVA-NeXT time to first token: llavakit's OpenVINO engine vs ``openvino_genai.VLMPipeline``, same IR.

Workload: one 1008x672 image (a 2x2 grid of 336-px tiles + the base tile, i.e.
5 tiles through the tower and 2144 image positions in the prompt) and a short
question; one generated token, so the time is the time to first token. The
model is random-weight (speed does not depend on weight values): a CLIP
ViT-L/14-336-shaped tower (LLaVA-1.6's) + the bench-1b LM shape (TinyLlama-1.1B;
``max_position_embeddings`` raised to 4096 because the image alone is 2144
positions), built with ``build_llava(arch="llava-next")`` and exported once with
llavakit's defaults for the LM (INT4) and weight-only INT8 vision.

Each engine runs in its own subprocess; rounds interleave the engines (order
alternating) so that load from other users of the machine spreads over both;
medians are reported, with the CPU busy share seen before each round.
Every timed request uses a new image (no feature cache hit) and llavakit's KV
state is reset first (no prefix reuse), so both engines do the full work.

Also measured, inside the llavakit worker: the NumPy AnyRes preprocessing and
the NumPy packing of tile features — the numbers behind doing the packing in the
engine rather than in the graph (see ``export/llava_next.py``).

    .venv/bin/python -m llavakit.eval.bench_next --rounds 3 --out benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

IMAGE_WH = (1008, 672)
QUESTION = "Describe this image in detail."
LM_SHAPES = {"bench-1b": "BENCH_1B_LM", "small": None}  # small: 4 layers, hidden 512 (harness checks, slow hosts)


def _images(count: int, seed: int, size: tuple[int, int] = IMAGE_WH):
    """Distinct, deterministic test images (smooth gradients + noise), so no two requests share features."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(count):
        base = np.stack([(x * rng.uniform(0.1, 0.3) + y * rng.uniform(0.1, 0.3) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)  # (H, W, 3)
        noise = rng.normal(0, 12, base.shape)
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out


def prepare(work_dir: Path, lm_shape: str = "bench-1b") -> Path:
    """Build (random parts → LLaVA-NeXT) and export once; later calls reuse what exists."""
    from llavakit.checkpoints.build import build_llava
    from llavakit.checkpoints.random_parts import BENCH_1B_LM, LMShape, VisionShape, make_random_lm, make_random_vision
    from llavakit.export import layout
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    root = work_dir / f"next-{lm_shape}"
    lm = BENCH_1B_LM if lm_shape == "bench-1b" else LMShape(hidden=512, layers=4, heads=8, kv_heads=4,
                                                             intermediate=1024, vocab=32000)
    lm = replace(lm, max_positions=4096)
    vision = VisionShape(hidden=1024, layers=24, heads=16, intermediate=4096, image_size=336, patch_size=14)
    if not (root / "lm" / "config.json").is_file():
        make_random_lm("llama", root / "lm", lm)
    if not (root / "vision" / "config.json").is_file():
        make_random_vision("clip", root / "vision", vision)
    if not (root / "llava-next" / "config.json").is_file():
        build_llava(root / "vision", root / "lm", root / "llava-next", arch="llava-next", force=True)
    export = root / "ov-int4"
    if not layout.is_exported(export):
        options = CompressionOptions(weights="int4", vision="int8_weights")
        export_openvino(root / "llava-next", export, options, force=True, show_progress=False)
    return export


# --- workers (one engine per subprocess) -------------------------------------------------------------


def worker_llavakit(export: str, requests: int, seed: int) -> dict:
    from llavakit import Pipeline
    from llavakit.runtime.ov_llava_next import pack_for

    pipe = Pipeline(export, backend="openvino")
    backend = pipe.backend
    pipe.generate(QUESTION, images=_images(1, seed + 999, (336, 336)), max_new_tokens=1)  # warm-up: compile, allocate
    runs = []
    for image in _images(requests, seed):
        backend.reset()  # no KV-prefix reuse: the full prompt is prefilled, as in GenAI
        begin = time.perf_counter()
        tiles = backend.anyres(image)
        preprocess_s = time.perf_counter() - begin
        begin = time.perf_counter()
        result = pipe.generate(QUESTION, images=[image], max_new_tokens=1, ignore_eos=True)
        ttft = time.perf_counter() - begin
        m = result.metrics
        runs.append({"ttft_s": ttft, "image_encode_s": m.image_encode_s, "preprocess_s": preprocess_s,
                     "prompt_tokens": m.prompt_tokens, "tiles": int(tiles.shape[0])})
    # The packing step alone, on features shaped like the real ones.
    features = backend._vision(tiles)[0]  # (N_tiles, P, D)
    height, width = IMAGE_WH[1], IMAGE_WH[0]
    pack = []
    for _ in range(20):
        begin = time.perf_counter()
        pack_for(backend.anyres, features, height, width, backend.newline)
        pack.append(time.perf_counter() - begin)
    # The tower over all tiles as one batch (what the engine does) vs one tile per inference.
    begin = time.perf_counter()
    backend._vision(tiles)
    batched_s = time.perf_counter() - begin
    begin = time.perf_counter()
    for i in range(tiles.shape[0]):
        backend._vision(tiles[i : i + 1])  # (1, 3, S, S)
    one_by_one_s = time.perf_counter() - begin
    return {"runs": runs, "pack_s": statistics.median(pack), "features_shape": list(features.shape),
            "vision_batched_s": batched_s, "vision_one_by_one_s": one_by_one_s}


def worker_genai(export: str, requests: int, seed: int, attention: str) -> dict:
    import openvino as ov
    import openvino_genai as genai

    pipe = genai.VLMPipeline(export, "CPU", ATTENTION_BACKEND=attention)
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample, config.ignore_eos = 1, False, True
    warm = _images(1, seed + 999, (336, 336))[0]
    pipe.generate(QUESTION, images=[ov.Tensor(np.asarray(warm)[None])], generation_config=config)
    runs = []
    for image in _images(requests, seed):
        tensor = ov.Tensor(np.asarray(image)[None])  # (1, H, W, 3) uint8
        begin = time.perf_counter()
        result = pipe.generate(QUESTION, images=[tensor], generation_config=config)
        ttft = time.perf_counter() - begin
        pm = result.perf_metrics
        runs.append({"ttft_s": ttft, "engine_ttft_s": pm.get_ttft().mean / 1000,
                     "image_encode_s": pm.get_vision_encoding_duration().mean / 1000,
                     "prepare_embeddings_s": pm.get_prepare_embeddings_duration().mean / 1000,
                     "prompt_tokens": int(pm.get_num_input_tokens())})
    return {"runs": runs}


ENGINES = {"llavakit": {}, "genai-sdpa": {"attention": "SDPA"}, "genai-pa": {"attention": "PA"}}


def _busy_share(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was busy over ``seconds`` (other users' load shows here)."""
    def read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]
    total0, idle0 = read()
    time.sleep(seconds)
    total1, idle1 = read()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def run(work_dir: Path, rounds: int, requests: int, engines: list[str], lm_shape: str, out: Path | None) -> dict:
    """Prepare, then ``rounds`` interleaved rounds of every engine; medians over all timed requests."""
    start = time.perf_counter()
    export = prepare(work_dir, lm_shape)
    prepare_s = time.perf_counter() - start
    results: dict[str, list] = {name: [] for name in engines}
    extras: dict[str, list] = {name: [] for name in engines}
    busy = []
    for index in range(rounds):
        order = engines if index % 2 == 0 else list(reversed(engines))
        for name in order:
            busy.append(_busy_share())
            spec = json.dumps({"engine": name, "export": str(export), "requests": requests, "seed": 100 * index})
            done = subprocess.run([sys.executable, "-m", "llavakit.eval.bench_next", "--worker", spec],
                                  capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if done.returncode != 0:
                raise RuntimeError(f"{name} worker failed: {done.stderr[-2000:]}")
            data = json.loads(done.stdout.strip().splitlines()[-1])
            results[name] += data["runs"]
            extras[name].append({k: v for k, v in data.items() if k != "runs"})
            print(f"round {index + 1} {name}: ttft {[round(r['ttft_s'], 2) for r in data['runs']]}", flush=True)
    report = {"export": str(export), "lm_shape": lm_shape, "image_wh": IMAGE_WH, "rounds": rounds,
              "requests_per_round": requests, "prepare_s": prepare_s, "busy_share_before_rounds": busy,
              "engines": {}}
    for name, runs in results.items():
        med = lambda key: statistics.median(r[key] for r in runs) if runs and key in runs[0] else None  # noqa: E731
        summary = {"ttft_s": med("ttft_s"), "image_encode_s": med("image_encode_s"), "n": len(runs),
                   "prompt_tokens": runs[0]["prompt_tokens"] if runs else None, "all_ttft_s": [r["ttft_s"] for r in runs]}
        if name == "llavakit":
            summary["preprocess_s"] = med("preprocess_s")
            for key in ("pack_s", "vision_batched_s", "vision_one_by_one_s"):
                summary[key] = statistics.median(e[key] for e in extras[name])
            summary["image_share"] = (summary["image_encode_s"] + summary["preprocess_s"]) / summary["ttft_s"]
        else:
            summary["prepare_embeddings_s"] = med("prepare_embeddings_s")
            summary["engine_ttft_s"] = med("engine_ttft_s")
            summary["image_share"] = summary["prepare_embeddings_s"] / summary["ttft_s"]
        report["engines"][name] = summary
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"llava-next-{lm_shape}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2, help="timed requests per engine per round")
    parser.add_argument("--engine", action="append", choices=list(ENGINES), help="repeatable; default: all")
    parser.add_argument("--lm-shape", default="bench-1b", choices=list(LM_SHAPES))
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "llavakit" / "bench")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec["engine"] == "llavakit":
            data = worker_llavakit(spec["export"], spec["requests"], spec["seed"])
        else:
            data = worker_genai(spec["export"], spec["requests"], spec["seed"], ENGINES[spec["engine"]]["attention"])
        runs_dir = Path(spec["export"]).parent / "runs"  # raw per-worker records, kept beside the export
        runs_dir.mkdir(exist_ok=True)
        (runs_dir / f"{spec['engine']}-seed{spec['seed']}-{int(time.time())}.json").write_text(json.dumps(data))
        print(json.dumps(data))
        return 0
    if args.prepare_only:
        print(prepare(args.work_dir, args.lm_shape))
        return 0
    report = run(args.work_dir, args.rounds, args.requests, args.engine or list(ENGINES), args.lm_shape, args.out)
    print(json.dumps(report["engines"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
