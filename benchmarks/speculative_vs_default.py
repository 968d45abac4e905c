"""The shipped draft against what a user runs without one: `chat budget --draft budget-eagle` vs `chat budget`.

Why: ``speculative_budget_bench.py`` compares with plain greedy at the settings the checking model uses
(``speculative.VERIFY_PROPERTIES``: no dynamic INT8 activations), because that is where output is identical.
A user without a draft runs OpenVINO's default settings instead, which compute slightly different numbers;
this measures the speed-up over *that* and counts how many answers still come out word for word the same.

Same 16 prompts as the budget bench (12 text + 4 image questions), budget INT8, greedy, 128 tokens, the draft's
own k; plain and speculative interleaved per prompt (alternating which goes first); ratio = median of
per-prompt speculative / plain decode tok/s over answers longer than 2 tokens.

    .venv/bin/python benchmarks/speculative_vs_default.py --out benchmarks/speculative-vs-default-DATE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from speculative_budget_bench import prompts  # same folder

from llavakit import Pipeline

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", default="budget-eagle")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    spec = Pipeline("budget", weights="int8", draft=args.draft)
    plain = Pipeline(spec.model_dir)  # OpenVINO's default settings: `llavakit chat budget --weights int8`
    for pipe in (plain, spec):  # first compile/alloc costs out of the timed runs
        pipe.generate("Hello!", max_new_tokens=8)
    runs = []
    for i, (question, images) in enumerate(prompts(False, ROOT / "benchmarks" / "speculative_prompts.txt")):
        first, second = (plain, spec) if i % 2 == 0 else (spec, plain)
        done = {id(first): first.generate(question, images, max_new_tokens=args.max_new_tokens),
                id(second): second.generate(question, images, max_new_tokens=args.max_new_tokens)}
        a, b = done[id(plain)], done[id(spec)]
        runs.append({"prompt": question, "image": bool(images), "tokens": len(a.token_ids),
                     "plain_tok_s": a.metrics.decode_tokens_per_s, "spec_tok_s": b.metrics.decode_tokens_per_s,
                     "identical": a.token_ids == b.token_ids})
        print(f"{question[:40]!r}: {runs[-1]['spec_tok_s'] / runs[-1]['plain_tok_s']:.2f}x", flush=True)
    timed = [r for r in runs if r["tokens"] > 2]
    summary = {"k": spec.speculative.k, "prompts": len(runs),
               "speedup_median": statistics.median(r["spec_tok_s"] / r["plain_tok_s"] for r in timed),
               "plain_tok_s_median": statistics.median(r["plain_tok_s"] for r in timed),
               "spec_tok_s_median": statistics.median(r["spec_tok_s"] for r in timed),
               "identical": sum(r["identical"] for r in runs)}
    print(json.dumps(summary))
    args.out.write_text(json.dumps({"draft": args.draft, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
