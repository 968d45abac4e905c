"""Train a feature-level (EAGLE-style) draft head for the ``budget`` model (one GPU call, a few minutes).

Why: the independent drafts of ``train_draft.py`` (2-4 layers, from scratch or cut from budget's own LM)
stop at 0.45-0.6 top-1 agreement with budget on prompts they never saw, so speculative decoding stayed
below 1x. A draft that reads the TARGET's last hidden state ("feature") sees what budget has already
worked out about the context, image included (EAGLE, Li et al. 2024), and only has to extrapolate it one
or two tokens.

The draft, per position j (H = budget's hidden size, 576):
    x_j = fc([embed(token_j) ; f_{j-1}])        (B, T, 2H) -> (B, T, H); f_{-1} = 0
    f^_j = LlamaModel(1 layer + final norm)(x_j)  (B, T, H): the predicted feature at j
    logits_j = budget's LM head(f^_j)            (B, T, V): predicts token_{j+1}
where ``embed`` and the LM head are budget's own (frozen; tied in SmolLM2) and f is budget's post-norm last
hidden state. At image positions ``embed(token_j)`` is the image feature row budget itself was fed.
At run time step 1 of a round gets the target's true feature; step 2 gets the draft's own f^ (so training
runs a second pass whose feature input is the first pass's prediction, detached: what step 2 sees).

Loss on each position: SmoothL1(f^_j, f_j) (EAGLE's feature regression) + 0.5 KL(budget's next-token
distribution || the draft's) on answer positions. The checks report, on held-out rows and on the
speculative bench's own 12 text prompts + 4 image questions (``benchmarks/speculative_prompts.txt``):
``acc1`` (step-1 top-1 agreement), ``acc2`` (step 2) and ``both`` (step 1 and the step-2 token after it
right), so expected tokens per k = 2 round = 1 + acc1 + both.

Output per draft: ``eagle-L{n}/`` with ``config.json`` + ``model.safetensors`` of the LlamaModel body,
``eagle_fc.safetensors`` (fc weight (H, 2H) and bias (H,)), the tokenizer and ``draft_head.json``.

Usage (GPU machine, after park.sh q1 (SCENES) and q2; run_eagle.sh carries q3)::

    python3 scripts/gpu/train_eagle.py --gguf G.gguf --data SHAPES_DIR --work W --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from template_prompts import template_prompts  # noqa: E402
from train_draft import (  # noqa: E402  (same folder; the teacher and its data are shared)
    DEV, GENERAL_PROMPTS, adamw_cosine, budget_teacher, greedy_answers, io_arguments, optimizer_step, render,
    sample_user_turns, shapes_questions,
)

BENCH_PROMPTS = Path(__file__).parents[2] / "benchmarks" / "speculative_prompts.txt"
BENCH_IMAGE_QUESTIONS = ["What is in this image?", "What colors are the shapes?", "How many shapes are there?",
                         "Describe the image in detail."]


def log(msg: str) -> None:
    print(f"[eagle {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class EagleDraft(torch.nn.Module):
    """fc + a small LlamaModel over (token embedding, previous feature) pairs -> the next feature."""

    def __init__(self, text_config, layers: int) -> None:
        super().__init__()
        from transformers import LlamaModel

        config = text_config.__class__.from_dict(text_config.to_dict())
        config.num_hidden_layers = layers
        config.layer_types = None if getattr(config, "layer_types", None) is None else config.layer_types[:layers]
        hidden = config.hidden_size
        self.fc = torch.nn.Linear(2 * hidden, hidden, bias=True)
        self.body = LlamaModel(config)
        self.body.embed_tokens = None  # inputs come as embeddings; the table is budget's

    def forward(self, embeds: torch.Tensor, prev: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat([embeds, prev], -1))  # (B, T, 2H) -> (B, T, H)
        return self.body(inputs_embeds=x, attention_mask=mask).last_hidden_state  # (B, T, H)


def shift_right(feats: torch.Tensor) -> torch.Tensor:
    """f_{j-1} at position j (zeros at j = 0): (B, T, H) -> (B, T, H)."""
    return torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], 1)


class Rows:
    """Training rows: prompt ids as budget sees them (image tokens expanded) + budget's greedy answer."""

    def __init__(self, processor, pad: int) -> None:
        self.processor, self.pad = processor, pad
        self.items: list[dict] = []  # {"ids": [...], "n_prompt": int, "image": PIL | None}

    def add(self, prompts: list[str], answers: list[list[int]], images: list | None) -> None:
        tok = self.processor.tokenizer
        for i, (p, a) in enumerate(zip(prompts, answers)):
            if not a:
                continue
            if images is None:
                ids = tok(render(self.processor, [{"type": "text", "text": p}]), add_special_tokens=False)["input_ids"]
                self.items.append({"ids": ids + a, "n_prompt": len(ids), "image": None})
            else:
                text = render(self.processor, [{"type": "image"}, {"type": "text", "text": p}])
                ids = self.processor(text=[text], images=[images[i]], return_tensors="pt")["input_ids"][0].tolist()
                self.items.append({"ids": ids + a, "n_prompt": len(ids), "image": images[i]})

    def batch(self, chunk: list[dict], max_len: int = 512):
        """(ids, mask, answer mask, pixel values or None); right-padded, (B, T) each."""
        length = min(max_len, max(len(r["ids"]) for r in chunk))
        ids = torch.full((len(chunk), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        answer = torch.zeros((len(chunk), length), dtype=torch.bool)  # position j predicts an answer token j+1
        for b, r in enumerate(chunk):
            seq = r["ids"][:length]  # images sit early; keep the start so no image token is cut
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            answer[b, r["n_prompt"] - 1: len(seq) - 1] = True
        images = [r["image"] for r in chunk if r["image"] is not None]
        pixels = None
        if images:
            pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return ids, mask, answer, pixels


@torch.no_grad()
def teacher_pass(model, ids, mask, pixels):
    """budget's input embeddings (image rows merged) and post-norm last hidden states, both (B, T, H)."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            out = model.model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    finally:
        hook.remove()
    return seen["embeds"].float(), out.last_hidden_state.float()


def step_losses(draft, head, embeds, feats, mask, answer, noise: float):
    """Both passes' losses and predictions. pass 1: true previous features; pass 2: pass 1's, detached."""
    prev = shift_right(feats)
    if noise:
        prev = prev + noise * torch.randn_like(prev) * feats.std()
    f1 = draft(embeds, prev, mask)  # (B, T, H)
    f2 = draft(embeds, shift_right(f1.detach()), mask)  # (B, T, H)
    valid = mask.bool()
    with torch.no_grad():
        t_logp = torch.log_softmax(head(feats[answer]).float(), -1)  # (N, V)
    losses, preds = [], []
    for f in (f1, f2):
        reg = F.smooth_l1_loss(f[valid], feats[valid])
        logits = head(f[answer]).float()  # (N, V)
        kl = (t_logp.exp() * (t_logp - torch.log_softmax(logits, -1))).sum(-1).mean()
        losses.append(reg + 0.5 * kl)
        preds.append(logits.argmax(-1))
    return losses, preds, t_logp.argmax(-1)


@torch.no_grad()
def agreement(draft, head, teacher, rows: Rows, items: list[dict]) -> dict:
    """Teacher-forced acc1 / acc2 / both (module docstring) against budget's greedy answers."""
    draft.eval()
    hit1 = hit2 = both = n = 0
    for i in range(0, len(items), 32):
        ids, mask, answer, pixels = (t.to(DEV) if t is not None else None for t in rows.batch(items[i: i + 32]))
        embeds, feats = teacher_pass(teacher, ids, mask, pixels)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            f1 = draft(embeds, shift_right(feats), mask)
            f2 = draft(embeds, shift_right(f1), mask)
        gold = torch.full_like(ids, -1)
        gold[:, :-1] = ids[:, 1:]
        ok1 = (head(f1.float()).argmax(-1) == gold) & answer  # (B, T)
        ok2 = (head(f2.float()).argmax(-1) == gold) & answer
        hit1 += int(ok1.sum())
        hit2 += int(ok2.sum())
        both += int((ok1[:, :-1] & ok2[:, 1:]).sum())
        n += int(answer.sum())
    draft.train()
    return {"acc1": round(hit1 / max(1, n), 4), "acc2": round(hit2 / max(1, n), 4),
            "both": round(both / max(1, n), 4), "tokens": n}


def train(draft, head, teacher, rows: Rows, train_items, held: dict, steps: int, batch: int, lr: float,
          noise: float, save) -> list[dict]:
    draft.to(DEV).train()
    opt, sched = adamw_cosine(draft, lr, steps, weight_decay=0.0)
    rng = random.Random(0)
    order: list[int] = []
    history, start = [], time.time()
    for step in range(steps):
        if len(order) < batch:
            order = list(range(len(train_items)))
            rng.shuffle(order)
        chunk = [train_items[order.pop()] for _ in range(batch)]
        ids, mask, answer, pixels = (t.to(DEV) if t is not None else None for t in rows.batch(chunk))
        embeds, feats = teacher_pass(teacher, ids, mask, pixels)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            (l1, l2), _, _ = step_losses(draft, head, embeds, feats, mask, answer, noise)
        optimizer_step(l1 + l2, draft, opt, sched)
        if step % 250 == 0 or step == steps - 1:
            row = {"step": step, "loss1": round(l1.item(), 4), "loss2": round(l2.item(), 4),
                   "s": round(time.time() - start, 1)}
            if step % 1000 == 0 or step == steps - 1:
                row.update({k: agreement(draft, head, teacher, rows, v) for k, v in held.items()})
                save(draft)
            history.append(row)
            log(json.dumps(row))
    return history


def main() -> None:
    ap = io_arguments(argparse.ArgumentParser())
    ap.add_argument("--text-prompts", type=int, default=4000), ap.add_argument("--image-prompts", type=int, default=1000)
    ap.add_argument("--openers", type=float, default=0.5)
    ap.add_argument("--template-prompts", type=int, default=0,
                    help="also this many everyday prompts from template_prompts.py (bench prompts held out)")
    ap.add_argument("--steps", type=int, default=3000), ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4), ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--layers", default="1", help="comma-separated draft depths to train, one after another")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True), out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher, processor, model_dir, _ = budget_teacher(Path(a.gguf), work)
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|im_end|>")
    cache = work / "eagle_data.pt"
    if cache.is_file():
        data = torch.load(cache, weights_only=False)
    else:
        from PIL import Image

        from llavakit.checkpoints.demo import EXAMPLE_IMAGE

        general = [p.strip() for p in GENERAL_PROMPTS.read_text().splitlines() if p.strip()]
        bench_text = [p.strip() for p in BENCH_PROMPTS.read_text().splitlines() if p.strip()]
        user = sample_user_turns(teacher, processor, a.text_prompts, min(1024, a.text_prompts), a.openers) + general
        user += template_prompts(a.template_prompts, held_out=bench_text)
        questions, images = shapes_questions(Path(a.data), a.image_prompts, 0)
        example = Image.open(EXAMPLE_IMAGE).convert("RGB")
        data = {"user": user, "questions": questions, "images": images, "bench_text": bench_text,
                "bench_q": BENCH_IMAGE_QUESTIONS, "bench_images": [example] * len(BENCH_IMAGE_QUESTIONS),
                "text_answers": greedy_answers(teacher, processor, user, None, 1024, 192),
                "image_answers": greedy_answers(teacher, processor, questions, images, 512, 64)}
        data["bench_text_answers"] = greedy_answers(teacher, processor, bench_text, None, 64, 128)
        data["bench_image_answers"] = greedy_answers(teacher, processor, BENCH_IMAGE_QUESTIONS,
                                                     data["bench_images"], 64, 128)
        torch.save(data, cache)
    log(f"data in {time.time() - t0:.0f} s: {len(data['user'])} text, {len(data['questions'])} image prompts")
    text, image, bench = Rows(processor, pad), Rows(processor, pad), Rows(processor, pad)
    text.add(data["user"], data["text_answers"], None)
    image.add(data["questions"], data["image_answers"], data["images"])
    bench.add(data["bench_text"], data["bench_text_answers"], None)
    bench.add(data["bench_q"], data["bench_image_answers"], data["bench_images"])
    rows = Rows(processor, pad)  # one list for batching; images and text rows mix in a batch
    rng = random.Random(0)
    rng.shuffle(text.items), rng.shuffle(image.items)
    n_text, n_image = min(300, len(text.items) // 5), min(200, len(image.items) // 5)
    held = {"text": text.items[:n_text], "image": image.items[:n_image], "bench_text": bench.items[:-4],
            "bench_image": bench.items[-4:]}
    rows.items = text.items[n_text:] + image.items[n_image:]
    counts: dict[int, int] = {}
    for r in rows.items:
        for t in r["ids"][r["n_prompt"]:]:
            counts[t] = counts.get(t, 0) + 1
    frequent = sorted(counts, key=lambda t: -counts[t])
    teacher.to(torch.bfloat16).eval()
    weight = teacher.lm_head.weight.detach().float().clone()  # (V, H); tied to the embedding in SmolLM2
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(DEV)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)  # frozen, shared by every draft
    for p in teacher.parameters():
        p.requires_grad_(False)
    text_config = teacher.config.get_text_config()
    report = {"args": vars(a), "drafts": {}}
    for layers in map(int, a.layers.split(",")):
        torch.manual_seed(0)
        draft = EagleDraft(text_config, layers)
        target = out / f"eagle-L{layers}"

        def save(m, target=target) -> None:
            from safetensors.torch import save_file

            target.mkdir(parents=True, exist_ok=True)
            m.body.config.save_pretrained(target)
            save_file({k: v.detach().half().cpu().contiguous() for k, v in m.body.state_dict().items()},
                      str(target / "model.safetensors"))
            save_file({"weight": m.fc.weight.detach().float().cpu().contiguous(),
                       "bias": m.fc.bias.detach().float().cpu().contiguous()}, str(target / "eagle_fc.safetensors"))
            tok.save_pretrained(target)
            (target / "draft_head.json").write_text(json.dumps({"head_ids": frequent}))

        params = sum(p.numel() for p in draft.parameters())
        log(f"eagle draft, {layers} layer(s): {params / 1e6:.2f} M parameters")
        history = train(draft, head, teacher, rows, rows.items, held, a.steps, a.batch, a.lr, a.noise, save)
        report["drafts"][f"L{layers}"] = {"params_m": round(params / 1e6, 2), "history": history}
        (out / "eagle_report.json").write_text(json.dumps(report, indent=1))  # after each draft: a time limit
        # that kills the next one keeps this one's table
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
