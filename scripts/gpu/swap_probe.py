"""Does the word swap move the held-out captions? budget v5 (committed) + a short caption-only LoRA fine-tune.

Why a probe and not a full run: a full budget run costs ~23 min of device time; this costs ~3. It continues the
committed model on caption samples with ``swap_words`` on, then scores the test split's captions (all
predictions kept, held-out pairs separately); the forced-prefix question of
``benchmarks/caption_prefix_probe.py`` answers on the saved model (after "A picture of a", orange star or red
star?). The baseline is v5
itself (OpenVINO INT8 on a CPU: caption 84.2, held-out 77.8, 6 of 25 orange stars right;
``benchmarks/training/budget_v5_v7_caption_errors.json``); ``--swap-prob 0`` is the control.

    python3 scripts/gpu/swap_probe.py --gguf G --data D --work W --out OUT [--steps 200 --batch 64 --swap-prob 0.3]

D: ``llavakit data shapes --families caption --train N --test 1000`` (train.json, test.json, images/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train_defaults import greedy_answers, log  # same folder: batched HF generate, timestamped log lines

HELD_OUT_WORDS = "red,green,blue,yellow,purple,orange;a,an"


def assemble_budget(gguf: Path, root: Path) -> Path:
    """The committed budget (v5) as an HF directory, its LM converted from the carried GGUF."""
    from llavakit.checkpoints.budget import ensure_budget_model
    from llavakit.checkpoints.gguf_lm import ensure_smollm2

    ensure_smollm2(root, gguf)
    return ensure_budget_model(root)


def finetune(model: Path, data: Path, out: Path, steps: int, batch: int, swap_prob: float, workers: int) -> Path:
    import torch

    from llavakit.train import TrainJob, resolve_recipe, train

    recipe = resolve_recipe("instruct", lora=True, overrides={
        "max_steps": steps, "batch_size": batch, "grad_accum": 1, "learning_rate": 1e-4, "lora_r": 16,
        "lora_alpha": 32, "merge_lora": True, "bf16": torch.cuda.is_available(), "save_steps": 100000,
        "logging_steps": 25, "dataloader_workers": workers, "warmup_ratio": 0.03,
        "swap_words": HELD_OUT_WORDS if swap_prob > 0 else "", "swap_prob": swap_prob})
    res = train(TrainJob(model=model, data=data, out=out, recipe=recipe, force=True, progress=False))
    log(f"fine-tuned {res.steps} steps, final loss {res.final_loss}")
    return out


def caption_eval(model: Path, test: Path, batch: int) -> dict:
    """Greedy captions for every caption question of ``test``, scored with llavakit's rule, held-out split out."""
    from llavakit.data.shapes import HELD_OUT
    from llavakit.eval.accuracy import score

    records = [r for r in json.loads(test.read_text()) if r.get("family") == "caption"]
    preds = greedy_answers(model, records, test.parent, batch, max_new_tokens=56)
    rows, held = [], set(map(tuple, HELD_OUT))
    for r, p in zip(records, preds):
        pairs = {(o["color"], o["shape"]) for o in r["scene"]["objects"]}
        rows.append({"id": r["id"], "answer": r["answer"], "prediction": p, "heldout": sorted(pairs & held),
                     "correct": score(p, r["answer"], "caption", scene=r["scene"])})
    ho = [x for x in rows if x["heldout"]]
    orange = [x for x in rows if ["orange", "star"] in [list(p) for p in x["heldout"]]]
    summary = {"caption": 100 * sum(x["correct"] for x in rows) / len(rows),
               "heldout": 100 * sum(x["correct"] for x in ho) / max(1, len(ho)),
               "orange_star_right": f"{sum(x['correct'] for x in orange)}/{len(orange)}", "n": len(rows)}
    log(f"captions {model.name}: {summary}")
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True), ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True), ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200), ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--swap-prob", type=float, default=0.3), ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=200), ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--baseline", action="store_true", help="also score v5 itself on the same captions, first")
    a = ap.parse_args()
    work, data, out = Path(a.work), Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = assemble_budget(Path(a.gguf), work / "cache")
    log(f"budget v5 assembled: {base}")
    if a.baseline:  # written at once: a run cut short by the device limit still brings the baseline back
        (out / "swap_probe_v5.json").write_text(json.dumps(caption_eval(base, data / "test.json", a.eval_batch),
                                                           indent=1))
    train_file = data / "train.json"
    if a.limit_train:  # CPU smoke runs
        rows = json.loads(train_file.read_text())[: a.limit_train]
        train_file = work / "train_small.json"
        train_file.write_text(json.dumps([{**r, "image": str((data / r["image"]).resolve())} for r in rows]))
    tag = f"swap{a.swap_prob:g}"
    tuned = finetune(base, train_file, work / tag, a.steps, a.batch, a.swap_prob, a.workers)
    result = caption_eval(tuned, data / "test.json", a.eval_batch)
    result["settings"] = {"steps": a.steps, "batch": a.batch, "swap_prob": a.swap_prob, "lr": 1e-4, "lora_r": 16}
    (out / f"swap_probe_{tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
