"""The speculative cost model on the bench-1b shape, measured: decode step, verify passes, EAGLE draft step.

Why: on budget (a 135M target) the verify pass is what caps speculative decoding (benchmarks/speculative.md);
a 1.1B target reads 8x the weights per step, so a pass of a few tokens should cost close to one step. There
is no pretrained 1B target here to train a draft against (random weights make acceptance meaningless), so this
measures the costs with a random EAGLE draft of the right shape (one TinyLlama-sized layer, 8192-row head) and
combines them with the agreement the trained budget feature draft reached on the bench prompts.

    .venv/bin/python benchmarks/speculative_costs_1b.py [--weights int4] [--out X.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from speculative_budget_bench import step_costs  # same folder

from llavakit import Pipeline
from llavakit.checkpoints.demo import cache_dir
from llavakit.checkpoints.random_parts import make_random_eagle
from llavakit.export.eagle import export_eagle_draft
from llavakit.runtime.speculative import VERIFY_PROPERTIES

#: teacher-forced agreement of the trained 1-layer feature draft with budget on the bench's text prompts
#: (benchmarks/speculative.md): step 1 right, steps 1 and 2 right, steps 1-3 right (estimated as both * acc2)
AGREEMENT = {"acc1": 0.551, "both": 0.295, "three": 0.295 * 0.497}


def predicted(costs: dict, k: int) -> float:
    """Speed-up over plain decoding = expected tokens a round / (verify pass + k draft steps), in decode steps."""
    tokens = 1 + sum([AGREEMENT["acc1"], AGREEMENT["both"], AGREEMENT["three"]][:k])
    return tokens / ((costs[f"verify_{k + 1}_ms"] + k * costs["draft_step_ms"]) / costs["target_step_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="int4", help="the bench-1b export's precision (as `llavakit bench` made it)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--properties", type=json.loads, default=None,
                    help='OpenVINO settings over VERIFY_PROPERTIES, e.g. \'{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}\'')
    a = ap.parse_args()
    root = cache_dir() / "bench" / "bench-1b"
    exports = sorted((root / "exports").glob(f"{a.weights}-*[!M]"))  # not the llama.cpp GGUF folder
    if not exports:
        raise SystemExit(f"no bench-1b {a.weights} export in {root}/exports: run `llavakit bench` once first")
    target = exports[0]
    draft_dir = root / f"eagle-random-{a.weights}"
    if not (draft_dir / "llavakit_draft.json").is_file():
        src = make_random_eagle(root / "llava", root / "eagle-random-src", seed=0)
        (src / "draft_head.json").write_text(json.dumps({"head_ids": list(range(8192))}))
        export_eagle_draft(src, root / "llava", draft_dir, weights=a.weights, force=True, head_size=8192)
    spec = Pipeline(target, draft=draft_dir, properties={**VERIFY_PROPERTIES, **(a.properties or {})})
    costs = step_costs(spec, draft_dir)  # the budget bench's measurement: decode step, verify 2-5, draft step
    result = {"target": str(target), "properties": a.properties, "costs": costs, "c": costs.pop("c"),
              "agreement_assumed": AGREEMENT, "predicted_speedup": {f"k={k}": round(predicted(costs, k), 2)
                                                                   for k in (1, 2, 3)},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
