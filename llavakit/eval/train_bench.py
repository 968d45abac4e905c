"""Training-speed benchmark: llavakit's instruct stage vs a plain transformers-Trainer baseline.

    python -m llavakit.eval.train_bench --out DIR [--tiny] [--steps 30 --warmup 5 --batch 16 --seq 256]

Design decisions:

* Same model, data and batch size for both runs. The model is built here from random
  weights (``BENCH_1B_LM`` + ``BENCH_1B_VISION`` through ``build_llava``; ``--tiny`` for the
  CPU smoke test), so nothing large is carried to the GPU machine.
* Data are synthetic fixed-length samples: ``seq`` tokens each, the first ones the image
  tokens of the tower (49 for a 224-px CLIP-B/32), the rest random text ids; labels are the
  text ids (image positions -100). Fixed length keeps padding identical for both runs, so
  the comparison isolates the trainer's speed options (bf16, SDPA, torch.compile, workers).
* Baseline = the way seed 003 writes it: ``Trainer`` + ``TrainingArguments`` with default
  AdamW, mixed precision (the seed's ``fp16=True`` on a T4 becomes ``bf16=True`` on Hopper;
  fp32 on CPU), a padding collator, no other options.
* llavakit = its own wiring: ``prepare_model`` (instruct freezing: vision frozen, projector
  + LM trained), ``training_arguments`` from the instruct recipe with the gpu speed options,
  and ``LlavakitTrainer``.
* Timing: a callback records the wall time of each optimizer step (cuda-synchronised);
  the first ``warmup`` steps (compile, allocator) are dropped.
* Scaling (``--only llavakit --model DIR`` under ``torchrun`` or ``accelerate launch``): each
  process trains ``batch`` samples a step (DDP, or FSDP when launched with accelerate's FSDP
  flags); samples/s counts all processes, so N GPUs vs 1 is a scaling efficiency. Only rank 0
  writes and prints; the model is built beforehand (``--build-only``), never by racing ranks.
* MFU = model FLOPs/s / measured peak bf16 matmul FLOPs/s (an 8192^3 bf16 matmul timed in
  the same run). Model FLOPs per sample (``model_flops_per_sample``) = 6 * N_lm * T (forward +
  backward of every LM matmul weight incl. lm_head, full fine-tuning; the embedding lookup
  excluded) + 6 * N_proj * T_img (trained projector) + 2 * N_vision * (T_img + 1) (frozen
  tower: forward only) + causal attention scores 12 * L * d * T^2 / 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch


def build_model(out: Path, tiny: bool) -> Path:
    """A random LLaVA of the bench-1b shape (or the tiny test shape) in ``out/model``."""
    from llavakit.checkpoints.build import build_llava
    from llavakit.checkpoints.random_parts import (BENCH_1B_LM, BENCH_1B_VISION, LMShape, VisionShape,
                                                   make_random_lm, make_random_vision)

    lm_shape, vis_shape = (LMShape(), VisionShape()) if tiny else (BENCH_1B_LM, BENCH_1B_VISION)
    lm = make_random_lm("llama", out / "lm", lm_shape)
    vis = make_random_vision("clip", out / "vision", vis_shape)
    return build_llava(vis, lm, out / "model", dtype="float32", force=True)


class SyntheticLlava(torch.utils.data.Dataset):
    """Fixed-length samples: image tokens first, then random text; labels on text only."""

    def __init__(self, n: int, seq: int, n_img: int, image_token: int, vocab: int, image_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, vocab, (n, seq), generator=g)  # (N, T)
        self.ids[self.ids == image_token] = 10  # no stray image placeholder in the text
        self.ids[:, :n_img] = image_token
        self.pix = torch.randn(n, 3, image_size, image_size, generator=g)  # (N, 3, H, W)
        self.n_img = n_img

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        labels = ids.clone()
        labels[: self.n_img] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "pixel_values": self.pix[i]}


def pad_collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The seed's padding collator (right padding to the longest sample; here all are equal)."""
    width = max(b["input_ids"].shape[0] for b in batch)
    out: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100)):
        out[key] = torch.stack([torch.nn.functional.pad(b[key], (0, width - b[key].shape[0]), value=fill)
                                for b in batch])  # (B, T)
    out["pixel_values"] = torch.stack([b["pixel_values"] for b in batch])  # (B, 3, H, W)
    return out


def _step_timer(window: int | None = None):
    """Step timing. ``window=None``: every step synchronised (the 2026-11-22 method). ``window=W``:
    one synchronisation before step W and one after the last step, so the CPU queues a step while
    the GPU runs the previous one, as in a real run; the mean step time is the window over its steps."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time per optimizer step (or per window) and the logged loss of every step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            if window is not None and state.global_step != window:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if window is not None and state.global_step != state.max_steps:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)  # window: one entry, the whole window

        def mean_step_s(self, warmup: int, steps: int) -> float:
            """Mean step time: the window over its steps, or the mean of the steps after ``warmup``."""
            if window is not None:
                return self.times[0] / (steps - window)
            times = self.times[warmup:] or self.times
            return sum(times) / len(times)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if window is None and logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def _recording(cls: type) -> type:
    """``cls`` (a Trainer) keeping each step's loss on the device: per-step losses without a sync a step."""

    class Recording(cls):
        step_losses: list[torch.Tensor]

        def training_step(self, *a: Any, **k: Any) -> torch.Tensor:
            loss = super().training_step(*a, **k)
            # a copy: CUDA graphs reuse their output buffers
            self.__dict__.setdefault("step_losses", []).append(loss.detach().clone())
            return loss

    return Recording


def _profiler(start: int, steps: int, out: Path):
    """Profile ``steps`` optimizer steps from step ``start``; the kernel table goes to ``out``.

    Why: MFU says how much is lost, not where; the per-kernel CUDA time of a few steady-state
    steps (matmuls vs elementwise vs optimizer vs idle) decides which lever to try next.
    """
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def __init__(self) -> None:
            self.prof: Any = None

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == start and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.prof is not None and state.global_step == start + steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                events = self.prof.key_averages()
                table = ""
                for key in (("self_device_time_total", "self_cuda_time_total") if torch.cuda.is_available()
                            else ("self_cpu_time_total",)):
                    try:  # the key's name changed across torch versions
                        table = events.table(sort_by=key, row_limit=45, max_name_column_width=70)
                        break
                    except (AttributeError, KeyError, ValueError):
                        continue
                cpu = events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=70)
                out.write_text(f"{table}\n\nby CPU time:\n{cpu}")
                print(table)
                self.prof = False  # done; never again this run

    return Profile()


def model_flops_per_sample(model: torch.nn.Module, seq: int, n_img: int) -> float:
    """6*N*T for LM + projector (trained), 2*N_v*T_img for the frozen tower, plus attention scores."""
    lm = model.model.language_model
    n_lm = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    n_lm += model.lm_head.weight.numel() if not model.config.get_text_config().tie_word_embeddings else 0
    n_proj = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    n_vis = sum(p.numel() for n, p in model.model.vision_tower.named_parameters() if "embeddings" not in n)
    tc = model.config.get_text_config()
    attn = 12 * tc.num_hidden_layers * tc.hidden_size * seq * seq / 2  # causal: half the scores
    return 6.0 * n_lm * seq + 6.0 * n_proj * n_img + 2.0 * n_vis * (n_img + 1) + attn


def peak_bf16_flops(tiny: bool) -> float:
    """Measured bf16 matmul rate of this process's device (the MFU denominator).

    Under torchrun/accelerate every process must time its own GPU (``LOCAL_RANK``): timed on
    the default ``cuda:0`` the processes share one GPU and each sees about half its rate.
    """
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    cuda = dev.startswith("cuda")
    n = 8192 if cuda else 512
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    reps = 50 if cuda else 3
    if cuda:
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize(dev)
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t)


def run_one(kind: str, model_dir: Path, data: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train ``steps`` steps with the baseline or llavakit wiring; times and losses back."""
    from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments, set_seed

    from llavakit.train import resolve_recipe  # noqa: F401  (recipes load light)
    from llavakit.train.recipes import Recipe
    from llavakit.train.trainer import LlavakitTrainer, load_model, prepare_model, training_arguments

    cuda = torch.cuda.is_available()
    set_seed(0)
    window = args.warmup if args.timing == "window" else None
    timer = _step_timer(window)
    log_every = args.steps if window is not None else 1  # window: losses come from _recording, not the log
    if kind == "baseline":
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
        for p in model.model.vision_tower.parameters():  # the seed freezes the tower too
            p.requires_grad_(False)
        targs = TrainingArguments(output_dir=str(out / "baseline"), per_device_train_batch_size=args.batch,
                                  learning_rate=2e-5, max_steps=args.steps, lr_scheduler_type="cosine",
                                  warmup_steps=0.03, logging_steps=log_every, bf16=cuda, remove_unused_columns=False,
                                  optim="adamw_torch", report_to="none", save_strategy="no", seed=0,
                                  disable_tqdm=True, use_cpu=not cuda)
        trainer = _recording(Trainer)(model=model, args=targs, train_dataset=data, data_collator=pad_collate, callbacks=[timer])
    else:
        extra: list[Any] = []
        recipe = Recipe(stage="instruct", train_lm=True, learning_rate=2e-5, max_steps=args.steps,
                        batch_size=args.batch, logging_steps=log_every, save_steps=10 ** 6, warmup_ratio=0.03,
                        bf16=cuda, torch_compile=cuda and not args.no_compile, attn_implementation="sdpa",
                        dataloader_workers=4 if cuda else 0, max_length=args.seq).validate()
        _, model = load_model(model_dir, recipe)
        set_seed(0)
        model, _ = prepare_model(model, recipe)
        targs = training_arguments(recipe, out / "llavakit")
        targs.save_strategy = "no"
        if args.optim:  # experiment: a lever not (yet) in the recipe, e.g. adamw_torch_fused
            targs.optim = args.optim
        if args.profile:
            extra.append(_profiler(args.warmup, args.profile, out / "profile.txt"))
        if args.compile_mode:  # experiment: torch.compile mode (max-autotune-no-cudagraphs, ...)
            targs.torch_compile_mode = args.compile_mode
        if args.liger:  # experiment: Liger's Triton kernels (fused linear+CE, RMSNorm, SwiGLU, RoPE)
            targs.use_liger_kernel = True
        trainer = _recording(LlavakitTrainer)(model=model, args=targs, train_dataset=data, data_collator=pad_collate,
                                  callbacks=[timer, *extra])
    from torch._dynamo.utils import counters

    counters.clear()
    trainer.train()
    breaks = dict(counters["graph_break"])  # reason -> count, over the whole run (warm-up compiles included)
    if window is not None:
        timer.losses = [float(t) for t in trainer.__dict__.get("step_losses", [])]
    step_s = timer.mean_step_s(args.warmup, args.steps)
    flops = model_flops_per_sample(trainer.model if kind == "baseline" else model, args.seq, args.n_img)
    world = trainer.args.world_size  # samples per step = per-device batch x processes
    result = {"kind": kind, "world_size": world, "distributed": str(trainer.accelerator.distributed_type.value),
              "step_s": step_s, "samples_s": args.batch * world / step_s,
              "tokens_s": args.batch * world * args.seq / step_s,
              "model_flops_s": flops * args.batch * world / step_s,
              "losses": timer.losses, "graph_breaks": sum(breaks.values()), "graph_break_reasons": breaks,
              "compile_mode": args.compile_mode if kind == "llavakit" else None,
              "max_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both trainers and write ``train_bench.json`` (and print a table)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/train_bench")
    ap.add_argument("--tiny", action="store_true", help="tiny shape for a CPU smoke run")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--optim", default=None, help="experiment: override llavakit's optimizer (adamw_torch_fused)")
    ap.add_argument("--timing", choices=("window", "step"), default="window",
                    help="window: sync before step WARMUP and after the last (default); step: sync every step")
    ap.add_argument("--profile", type=int, default=0, help="profile N llavakit steps after warm-up (profile.txt)")
    ap.add_argument("--compile-mode", default=None, help="experiment: torch.compile mode for the llavakit side")
    ap.add_argument("--sdpa-backend", default=None, choices=("flash", "efficient", "cudnn"),
                    help="experiment: restrict SDPA to one kernel family (torch.backends.cuda)")
    ap.add_argument("--liger", action="store_true", help="experiment: llavakit side with Liger kernels")
    ap.add_argument("--only", choices=("baseline", "llavakit"), default=None, help="run one trainer (scaling runs)")
    ap.add_argument("--model", default=None, help="an already built model dir (required with several processes)")
    ap.add_argument("--build-only", action="store_true", help="build the model into OUT/model and stop")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seq = min(args.seq, 48)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sdpa_backend and torch.cuda.is_available():
        switches = {"flash": torch.backends.cuda.enable_flash_sdp,
                    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
                    "cudnn": torch.backends.cuda.enable_cudnn_sdp}
        for name, enable in switches.items():
            enable(name == args.sdpa_backend)
    model_dir = Path(args.model) if args.model else build_model(out, args.tiny)
    if args.build_only:
        return {"model": str(model_dir)}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    cfg = json.loads((model_dir / "config.json").read_text())
    vc, tc = cfg["vision_config"], cfg["text_config"]
    args.n_img = (vc["image_size"] // vc["patch_size"]) ** 2
    data = SyntheticLlava(args.batch * world * (args.steps + 1), args.seq, args.n_img,
                          cfg.get("image_token_id", cfg.get("image_token_index")), tc["vocab_size"], vc["image_size"])
    peak = peak_bf16_flops(args.tiny)
    kinds = (args.only,) if args.only else ("baseline", "llavakit")
    results = [run_one(k, model_dir, data, args, out) for k in kinds]
    for r in results:
        r["mfu"] = r["model_flops_s"] / (peak * r["world_size"])  # per GPU
    if args.only:
        report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "peak_bf16_tflops": peak / 1e12, "args": vars(args),
                  "results": results}
        if rank0:
            (out / "train_bench.json").write_text(json.dumps(report, indent=1))
            r = results[0]
            print(f"{r['kind']} x{r['world_size']} ({r['distributed']}): step {r['step_s'] * 1e3:.1f} ms  "
                  f"{r['samples_s']:.2f} samples/s  MFU/GPU {100 * r['mfu']:.1f}%  breaks {r['graph_breaks']}  "
                  f"loss {r['losses'][-1:]}")
        return report
    base, kit = results
    n = min(len(base["losses"]), len(kit["losses"]))
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "peak_bf16_tflops": peak / 1e12, "args": vars(args),
              "results": results, "ratio_samples_s": kit["samples_s"] / base["samples_s"],
              "max_abs_loss_diff": max((abs(a - b) for a, b in zip(base["losses"][:n], kit["losses"][:n])),
                                       default=math.nan)}
    (out / "train_bench.json").write_text(json.dumps(report, indent=1))
    print(f"device {report['device']}  peak bf16 {peak / 1e12:.1f} TFLOP/s")
    for r in results:
        print(f"{r['kind']:9s} step {r['step_s'] * 1e3:8.1f} ms  {r['samples_s']:8.2f} samples/s  "
              f"{r['tokens_s']:10.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  loss {r['losses'][:1]}..{r['losses'][-1:]}")
    print(f"ratio llavakit/baseline samples/s {report['ratio_samples_s']:.2f}  "
          f"max |loss diff| {report['max_abs_loss_diff']:.4f}")
    return report


if __name__ == "__main__":
    main()
