"""Speculative decoding on the budget model: a draft LM vs plain greedy decoding, same run.

Target: ``budget`` (SmolLM2-135M-Instruct LM + shapes-world vision) exported to OpenVINO at
INT8 (what ``llavakit demo`` runs) and at fp32, through the eval export cache
(``llavakit.eval.accuracy.open_variant``: exported once, then reused). Draft: an HF
causal LM directory given on the command line (its tokenizer must be SmolLM2's),
exported with ``export_draft_lm`` at the target row's precision into a cache dir;
``random`` makes an untrained 2-layer, hidden-192 LM with SmolLM2's vocabulary
(acceptance ~0: the overhead floor; used to test the script before a trained draft
exists) and ``same`` uses budget's own LM (acceptance ~1: the upper bound on accepted
tokens, at a draft as costly as the target).

Workload: the first 12 lines of ``benchmarks/speculative_prompts.txt`` (text) plus 4
questions about llavakit's example image, greedy, ``--max-new-tokens`` (128), eos
honoured (answers end where plain greedy ends them). Rows: k in {2, 3, 4} and
adaptive (starts at 3, within [1, 6]). Per prompt and row a plain run and a
speculative run go back to back, alternating which goes first (the 2-core machine is
noisy and shared): the per-prompt ratio is spec / plain decode tok/s, the row's
speed-up the median over prompts. Also per row: acceptance (accepted / drafted over
all prompts), whether every answer's token ids equal plain greedy's, and the median
plain and speculative tok/s. Per precision: measured step costs (median ms) of one
target decode step, one draft step and target verify passes of 2..5 tokens, and the
cost ratio ``c`` = draft step / target step of the cost model in benchmarks/speculative.md.

    .venv/bin/python benchmarks/speculative_budget_bench.py DRAFT_DIR --out spec-budget.json
    .venv/bin/python benchmarks/speculative_budget_bench.py random --quick --out /tmp/spec.json  # ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from llavakit import Pipeline
from llavakit.checkpoints.budget import ensure_budget_model
from llavakit.checkpoints.demo import EXAMPLE_IMAGE, cache_dir
from llavakit.eval.accuracy import open_variant
from llavakit.export.cache import export_key
from llavakit.export.draft import export_draft_lm
from llavakit.export.eagle import export_eagle_draft, is_eagle_source
from llavakit.runtime.eagle import EagleDraft
from llavakit.runtime.speculative import VERIFY_PROPERTIES, DraftModel, draft_marker

ROOT = Path(__file__).resolve().parent.parent
IMAGE_QUESTIONS = ["What is in this image?", "What colors are the shapes?", "How many shapes are there?",
                   "Describe the image in detail."]
ROWS = [("k=2", 2, False), ("k=3", 3, False), ("k=4", 4, False), ("adaptive", 3, True)]
ALL_ROWS = {name: (name, k, adaptive) for name, k, adaptive in [("k=1", 1, False), *ROWS]}


def prompts(quick: bool, path: Path) -> list[tuple[str, list[str]]]:
    """(question, images): the text prompts in ``path`` (12) + 4 image questions (quick: 4 + 2).

    The default file, ``benchmarks/speculative_prompts.txt``, is held out from the trained draft's data
    (``scripts/gpu/train_draft.py`` used ``general_prompts.txt`` and prompts sampled from budget itself):
    a draft scored on prompts it was trained on accepts far more than it would for a user.
    """
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()][:12]
    text = [(line, []) for line in lines]
    image = [(q, [str(EXAMPLE_IMAGE)]) for q in IMAGE_QUESTIONS]
    if quick:
        return text[:4] + image[:1] + image[3:]
    return text + image


def random_draft_source(target: Path, out: Path) -> Path:
    """An untrained 2-layer, hidden-192 LM with the target's tokenizer (for testing the script)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(target).text_config
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 192, 512
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 3, 1, 64
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(target).save_pretrained(out)
    return out


def draft_export(source: Path, weights: str, root: Path, head_size: int | None = None) -> Path:
    """The draft exported at ``weights`` into ``root`` (once per source files + precision + head size);
    ``head_size``: a reduced LM head of the most frequent ids of ``source/draft_head.json``."""
    tag = f"draft-{weights}" + (f"-head{head_size}" if head_size else "")
    out = root / f"{source.name}-{tag[6:]}-{export_key(source, tag)}"
    if not (out / "llavakit_draft.json").is_file():
        print(f"exporting draft {source} at {weights} (head {head_size or 'full'}) -> {out}", flush=True)
        if is_eagle_source(source):  # a feature draft: its head is the target's
            export_eagle_draft(source, ensure_budget_model(), out, weights=weights, force=True, head_size=head_size)
        else:
            export_draft_lm(source, out, weights=weights, force=True, head_size=head_size)
    return out


def median_ms(step, n: int = 24, warm: int = 4) -> float:
    times = []
    for i in range(n + warm):
        begin = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - begin)
    return statistics.median(times[warm:]) * 1e3


def step_costs(spec: Pipeline, draft_dir: Path) -> dict[str, float]:
    """Median ms of a target decode step, a draft step and target verify passes of 2..5 tokens."""
    from llavakit.runtime.speculative import TargetKV

    backend = spec.backend
    question = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    prepared = backend.prepare([{"role": "user", "content": [{"type": "text", "text": question}]}], [])
    out: dict[str, float] = {}
    backend.reset()
    backend.prefill(prepared)
    out["target_step_ms"] = median_ms(lambda i: backend.decode_one(100 + i % 50))
    for n in (2, 3, 4, 5):
        backend.reset()
        backend.prefill(prepared)
        kv = TargetKV(backend)
        out[f"verify_{n}_ms"] = median_ms(lambda i, kv=kv, n=n: kv.verify([100 + (i + j) % 50 for j in range(n)]), n=12)
    backend.reset()
    marker = draft_marker(draft_dir)
    if marker.get("kind") == "eagle":  # one row: the target's embedding and a feature in, a feature out
        draft = EagleDraft(draft_dir, marker)
        row = np.zeros((1, draft.we.shape[0]), dtype=np.float32)
        draft.run(np.zeros((len(prepared.token_ids), row.shape[1]), dtype=np.float32),
                  np.zeros((len(prepared.token_ids), row.shape[1]), dtype=np.float32),
                  np.arange(len(prepared.token_ids)))

        def draft_step(i: int) -> None:
            draft.run(row, row, np.array([draft.length]))
    else:
        draft = DraftModel(draft_dir)
        sequence = list(prepared.token_ids)
        draft.sync(sequence)

        def draft_step(i: int) -> None:
            sequence.append(100 + i % 50)
            draft.sync(sequence)

    out["draft_step_ms"] = median_ms(draft_step)
    out["c"] = out["draft_step_ms"] / out["target_step_ms"]
    return {k: round(v, 3) for k, v in out.items()}


def run_precision(precision: str, draft_source: Path, items: list, max_new_tokens: int, penalty: float,
                  drafts_root: Path, head_size: int | None = None, rows: list | None = None,
                  target_properties: dict | None = None) -> dict:
    """``target_properties``: OpenVINO settings for BOTH the plain and the verifying target (they win over
    speculative.VERIFY_PROPERTIES), e.g. the plugin's dynamic quantization back on to see what identity costs."""
    rows = rows or ROWS
    exported = open_variant(ensure_budget_model(), "openvino", precision).model_dir
    draft_dir = draft_export(draft_source, precision, drafts_root, head_size)
    # plain greedy at the settings the speculative target uses (speculative.VERIFY_PROPERTIES): the same numbers
    plain = Pipeline(exported, properties={**VERIFY_PROPERTIES, **(target_properties or {})})
    spec = Pipeline(exported, draft=draft_dir, properties=target_properties)
    settings = {"max_new_tokens": max_new_tokens, "repetition_penalty": penalty}
    for question, images in items[:1]:  # warm-up: first compile/alloc costs out of the timed runs
        plain.generate(question, images, max_new_tokens=8)
        spec.generate(question, images, max_new_tokens=8)
    per_row: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for p, (question, images) in enumerate(items):
        for r, (name, k, adaptive) in enumerate(rows):
            spec.speculative.k, spec.speculative.adaptive = k, adaptive
            first_plain = (p + r) % 2 == 0
            if first_plain:
                a = plain.generate(question, images, **settings)
            b = spec.generate(question, images, **settings)
            if not first_plain:
                a = plain.generate(question, images, **settings)
            stats = b.speculative
            per_row[name].append({
                "prompt": question, "image": bool(images), "tokens": len(a.token_ids),
                "plain_tok_s": a.metrics.decode_tokens_per_s, "spec_tok_s": b.metrics.decode_tokens_per_s,
                "ratio": b.metrics.decode_tokens_per_s / a.metrics.decode_tokens_per_s
                if a.metrics.decode_tokens_per_s else float("nan"),
                "identical": a.token_ids == b.token_ids, "drafted": stats.drafted, "accepted": stats.accepted,
                "rounds": stats.rounds, "k_final": stats.k_final})
        print(f"[{precision}] {p + 1}/{len(items)} {question[:40]!r}: " + ", ".join(
            f"{name} {per_row[name][-1]['ratio']:.2f}x" for name, _, _ in rows), flush=True)
    summary = []
    for name, k, adaptive in rows:
        runs = [x for x in per_row[name] if x["tokens"] > 2]  # a 1-2 token answer has no decode rate
        drafted = sum(x["drafted"] for x in per_row[name])
        summary.append({
            "precision": precision, "row": name, "k": k, "adaptive": adaptive, "prompts": len(per_row[name]),
            "speedup_median": statistics.median(x["ratio"] for x in runs) if runs else float("nan"),
            "plain_tok_s_median": statistics.median(x["plain_tok_s"] for x in runs) if runs else float("nan"),
            "spec_tok_s_median": statistics.median(x["spec_tok_s"] for x in runs) if runs else float("nan"),
            "acceptance": sum(x["accepted"] for x in per_row[name]) / drafted if drafted else 0.0,
            "identical": sum(x["identical"] for x in per_row[name]),
            "mean_tokens": statistics.mean(x["tokens"] for x in per_row[name]),
            "runs": per_row[name]})
    costs = step_costs(spec, draft_dir)
    print(f"[{precision}] step costs: {costs}", flush=True)
    return {"precision": precision, "target": str(plain.model_dir), "draft": str(draft_dir), "rows": summary,
            "costs": costs}


def table(results: list[dict]) -> str:
    lines = [("| target | draft k | plain tok/s | spec tok/s | speed-up (median) | acceptance | greedy identical "
              "| c (draft/target step) |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        c = res["costs"]["c"]
        for row in res["rows"]:
            lines.append(f"| budget {row['precision']} | {row['row']} | {row['plain_tok_s_median']:.1f} | "
                         f"{row['spec_tok_s_median']:.1f} | {row['speedup_median']:.2f}x | {row['acceptance']:.2f} | "
                         f"{row['identical']}/{row['prompts']} | {c:.3f} |")
    lines.append("")
    lines.append("| target | target step ms | draft step ms | verify 2 / 3 / 4 / 5 tokens ms |")
    lines.append("| --- | --- | --- | --- |")
    for res in results:
        c = res["costs"]
        lines.append(f"| budget {res['precision']} | {c['target_step_ms']:.1f} | {c['draft_step_ms']:.2f} | "
                     f"{c['verify_2_ms']:.1f} / {c['verify_3_ms']:.1f} / {c['verify_4_ms']:.1f} / "
                     f"{c['verify_5_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("draft", help="HF causal LM dir with SmolLM2's tokenizer; 'random' or 'same' (see docstring)")
    parser.add_argument("--out", required=True, type=Path, help="JSON results path")
    parser.add_argument("--quick", action="store_true", help="6 prompts instead of 16, INT8 target only")
    parser.add_argument("--precisions", default=None, help="comma-separated target precisions (default int8,fp32)")
    parser.add_argument("--prompts", type=Path, default=ROOT / "benchmarks" / "speculative_prompts.txt",
                        help="text prompts, one per line (default: held out from the trained draft's data)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = plain greedy (the demo uses 1.2)")
    parser.add_argument("--head-size", type=int, default=None,
                        help="export the draft with a reduced LM head of this many ids (needs DRAFT/draft_head.json)")
    parser.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                        help=f"which settings to run, of {', '.join(ALL_ROWS)}")
    parser.add_argument("--target-properties", type=json.loads, default=None,
                        help='JSON OpenVINO settings for plain and verifying target, e.g. '
                             '\'{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}\'')
    parser.add_argument("--cache", type=Path, default=cache_dir() / "bench" / "spec-drafts")
    args = parser.parse_args()
    start = time.perf_counter()
    budget = ensure_budget_model()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.draft == "random":
        source = random_draft_source(budget, args.cache / "random-2x192")
    elif args.draft == "same":
        source = budget
    else:
        source = Path(args.draft).resolve()
    precisions = (args.precisions or ("int8" if args.quick else "int8,fp32")).split(",")
    items = prompts(args.quick, args.prompts)
    results = [run_precision(p, source, items, args.max_new_tokens, args.repetition_penalty, args.cache,
                             args.head_size, [ALL_ROWS[r] for r in args.rows.split(",")], args.target_properties)
               for p in precisions]
    text = table(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "draft_source": str(source), "head_size": args.head_size, "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty, "prompts": [q for q, _ in items],
        "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - start, 1), "results": results, "markdown": text}, indent=1) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
