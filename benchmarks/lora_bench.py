"""Runtime LoRA cost: decode speed with and without adapters, and the cost of switching adapters.

    .venv/bin/python benchmarks/lora_bench.py --source ~/.cache/llavakit/bench/bench-1b/llava

One run, side by side (ratios, not lone times): the same LLaVA exported twice with identical
compression, once plain and once with ``--lora-slots``; two PEFT adapters (rank ``--rank`` on
every LM projection, random non-zero B) made with PEFT itself. Rows: plain export (no
adapter), LoRA export with no adapter, with adapter a, with a 50/50 mix of a and b. Rounds
interleave the rows so a neighbour's load on a shared machine hits every row alike.
Switching: ``bind_adapter`` alternating between two mixes (factors cached), and the first
use of a mix (factors built from the adapters). Writes ``lora-bench.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path


def export_both(source: Path, work: Path, weights: str, targets: list[str] | None) -> tuple[Path, Path]:
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    options = CompressionOptions(weights=weights, vision="int8_weights", text_embeddings="int8")
    suffix = "-" + "-".join(targets) if targets else ""
    plain, slotted = work / f"plain-{weights}", work / f"lora-{weights}{suffix}"
    for out, slots in ((plain, False), (slotted, True)):
        if not (out / "openvino_language_model.xml").is_file():
            start = time.perf_counter()
            export_openvino(source, out, options, force=True, show_progress=False, lora_slots=slots,
                            lora_targets=targets if slots else None)
            print(f"exported {out.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return plain, slotted


def make_adapters(source: Path, work: Path, rank: int, targets: list[str] | None) -> dict[str, Path]:
    """Two PEFT adapters on the slotted LM projections, B drawn at random (PEFT's zero init would be a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    suffix = "-" + "-".join(targets) if targets else ""
    out = {name: work / f"adapter-{name}-r{rank}{suffix}" for name in ("a", "b")}
    if all((p / "adapter_model.safetensors").is_file() for p in out.values()):
        return out
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    names = targets or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pattern = r".*language_model.*\.(" + "|".join(names) + ")"
    for seed, (name, path) in enumerate(out.items()):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=pattern))
        with torch.no_grad():
            for key, param in peft_model.named_parameters():
                if "lora_B" in key:
                    param.normal_(0, 0.02)
        peft_model.save_pretrained(path)
        model = peft_model.unload()
    del model
    gc.collect()
    return out


def decode_speed(pipe, adapter, tokens: int) -> float:
    result = pipe.generate("Tell me a long story about a cat.", adapter=adapter, max_new_tokens=tokens,
                           ignore_eos=True)
    return result.metrics.decode_tokens_per_s


def switching(backend) -> tuple[list[float], list[float]]:  # backend: OpenVINOBackend
    """ms per ``bind_adapter``: alternating two cached mixes; a mix never seen (factors built)."""
    mix_a, mix_b = (("a", 1.0),), (("a", 0.5), ("b", 0.5))
    backend.bind_adapter(mix_a)  # both mixes built and cached before timing
    backend.bind_adapter(mix_b)
    switch = []
    for i in range(40):
        start = time.perf_counter()
        backend.bind_adapter(mix_a if i % 2 else mix_b)
        switch.append((time.perf_counter() - start) * 1000)
    cold = []
    for i in range(3):
        start = time.perf_counter()
        backend.bind_adapter((("a", 0.3 + i * 0.1), ("b", 0.2)))
        cold.append((time.perf_counter() - start) * 1000)
    return switch, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="HF LLaVA directory (e.g. the bench-1b build)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/llavakit/bench/lora")
    parser.add_argument("--weights", default="int4")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lora-targets", default=None, help="comma list, e.g. q_proj,v_proj (default: all)")
    parser.add_argument("--switch-only", action="store_true", help="measure switching only (exports must exist)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    targets = args.lora_targets.split(",") if args.lora_targets else None

    from llavakit import Pipeline

    plain_dir, lora_dir = export_both(args.source, args.work, args.weights, targets)
    adapters = make_adapters(args.source, args.work, args.rank, targets)
    lora = Pipeline(lora_dir, backend="openvino", adapters={k: str(v) for k, v in adapters.items()})
    if args.switch_only:
        cached, first = switching(lora.backend)
        print(f"switch (cached mix): median {statistics.median(cached):.2f} ms, max {max(cached):.2f} ms; "
              f"first use of a mix: {statistics.median(first):.1f} ms")
        return
    plain = Pipeline(plain_dir, backend="openvino")
    rows = {"plain export, no adapter": (plain, None), "LoRA export, no adapter": (lora, None),
            "LoRA export, adapter a": (lora, "a"), "LoRA export, mix a 0.5 + b 0.5": (lora, {"a": 0.5, "b": 0.5})}
    for pipe, adapter in rows.values():  # warm-up: compile caches, factors built
        decode_speed(pipe, adapter, 4)
    speeds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (pipe, adapter) in rows.items():
            speeds[name].append(decode_speed(pipe, adapter, args.tokens))
    median = {name: statistics.median(v) for name, v in speeds.items()}

    backend = lora.backend
    switch, cold = switching(backend)

    base = median["plain export, no adapter"]
    report = {
        "source": str(args.source), "weights": args.weights, "rank": args.rank, "tokens": args.tokens,
        "rounds": args.rounds, "lora_targets": targets or "all LM linears",
        "slots": len(backend.lora.lm_slots),
        "decode_tokens_per_s": speeds, "median": median,
        "ratio_vs_plain": {name: value / base for name, value in median.items()},
        "switch_ms_cached_median": statistics.median(switch), "switch_ms_cached_max": max(switch),
        "switch_ms_first_use_median": statistics.median(cold),
    }
    (args.work / f"lora-bench-{'-'.join(targets) if targets else 'all'}-r{args.rank}.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| run | decode tokens/s (median) | vs plain export |\n| --- | ---: | ---: |")
    for name, value in median.items():
        print(f"| {name} | {value:.2f} | {value / base:.3f} |")
    print(f"switch (cached mix): median {report['switch_ms_cached_median']:.2f} ms, max "
          f"{report['switch_ms_cached_max']:.2f} ms; first use of a mix: {report['switch_ms_first_use_median']:.1f} ms")


if __name__ == "__main__":
    main()
