"""Speculative decoding on the demo model (SmolLM2-135M LM, int4 export): upper bound and draft cost."""
import json, time, statistics, sys
from pathlib import Path
import numpy as np
from llavakit.checkpoints.demo import ensure_demo_model, EXAMPLE_IMAGE
from llavakit.export.draft import export_draft_lm
from llavakit import Pipeline

work = Path("/tmp/spec/bench"); work.mkdir(parents=True, exist_ok=True)
demo = ensure_demo_model()
if not (work / "draft_same").exists():
    export_draft_lm(demo, work / "draft_same", weights="int4")
if not (work / "draft_small").exists():
    from speculative_budget_bench import random_draft_source  # the same untrained 2-layer, hidden-192 draft

    export_draft_lm(random_draft_source(demo, work / "small_hf"), work / "draft_small", weights="int4")

N = 64
PROMPT = "Write a short story about a lighthouse keeper."
def run(pipe, images=(), reps=3, **kw):
    rates, res = [], None
    for _ in range(reps):
        res = pipe.generate(PROMPT, images=list(images), max_new_tokens=N, ignore_eos=True, **kw)
        rates.append(res.metrics.decode_tokens_per_s)
    return statistics.median(rates), res

base = Pipeline(demo)  # int4 export from the cache
rows = []
for images in ((), (str(EXAMPLE_IMAGE),)):
    tag = "image" if images else "text"
    r0, ref = run(base, images)
    rows.append((tag, "plain", "-", r0, 1.0, "-"))
    for name in ("draft_same", "draft_small"):
        for k in (2, 4, 6):
            pipe = Pipeline(demo, draft=work / name, num_draft_tokens=k)
            r, res = run(pipe, images)
            same = res.token_ids == ref.token_ids
            rows.append((tag, name, k, r, r / r0, f"{res.speculative.acceptance_rate:.2f}", same))
            print(rows[-1], flush=True)

# c: per-token cost of one draft step vs one target decode step (same run, same machine)
from llavakit.runtime.speculative import DraftModel
def per_token(step, n=48):
    ts = []
    for i in range(n):
        t = time.perf_counter(); step(i); ts.append(time.perf_counter() - t)
    return statistics.median(ts[8:])
tb = base.backend
prep = tb.prepare([{"role": "user", "content": [{"type": "text", "text": PROMPT}]}], [])
tb.reset(); tb.prefill(prep)
t_target = per_token(lambda i: tb.decode_one(100 + i))
out = {"rows": rows, "t_target_ms": t_target * 1e3}
for name in ("draft_same", "draft_small"):
    d = DraftModel(work / name)
    seq = list(prep.token_ids)
    d.sync(seq)
    def step(i):
        seq.append(100 + i); d.sync(seq)
    t = per_token(step)
    out[f"t_{name}_ms"] = t * 1e3
    out[f"c_{name}"] = t / t_target
print(json.dumps(out, indent=1))
(work / "result.json").write_text(json.dumps(out, indent=1))
