"""Train a speculative-decoding draft for the ``budget`` model (one GPU call, a few minutes).

Why this shape: the draft only has to predict what budget itself will say, greedily, from the text the
runtime shows it (``runtime/speculative.py`` gives the draft the prompt's text tokens without image
positions, then the answer so far). So the training data is budget's own greedy output (sequence-level
distillation) on the two kinds of prompts the demo sees:

- text chat: user turns sampled from budget itself (temperature 1) plus ``general_prompts.txt``;
- image questions: shapes-world questions with their images, answered by budget with the image
  (the draft then learns the answer formats it can predict without seeing the image).

The draft is a 2-layer Llama on SmolLM2's vocabulary whose embedding starts as the PCA of SmolLM2's
(the vocabulary is most of a small draft's parameters; a good start saves most of the training).
A plain loop is enough here: one small model, one GPU, minutes.

Next to each draft it writes ``draft_head.json``: the ids of budget's answer tokens, most frequent first,
which ``llavakit export-draft --head-size N`` uses to keep only N rows of the draft's LM head (the
draft step is then cheaper; ``export/draft.py``). The agreement checks report both the full-vocabulary
figure and the figure with the head cut to ``--head-size`` (the one the runtime will see).
``--resume`` starts each draft from the one a previous (time-limited) call saved in ``--out``; the
teacher's data is cached in ``--work``, so a second call on the same warm machine only trains.

Usage (GPU machine, GGUF and wheels as in run_budget_v2.sh)::

    python3 scripts/gpu/train_draft.py --gguf G.gguf --data SHAPES_DIR --work W --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.txt")
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke test of the script only


def log(msg: str) -> None:
    print(f"[draft {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def budget_teacher(gguf: Path, work: Path):
    """Assemble budget (SmolLM2 from the GGUF + the committed parts) and load it on the GPU."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavakit.checkpoints.budget import ensure_budget_model
    from llavakit.checkpoints.gguf_lm import ensure_smollm2

    lm_dir = ensure_smollm2(work, gguf)
    model_dir = ensure_budget_model(work)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).to(DEV).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    return model, processor, model_dir, lm_dir


def render(processor, content: list[dict]) -> str:
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


#: How people open a request to an assistant. With --openers, most sampled user turns start with one, so
#: the prompts read like requests rather than whatever a 135M model writes after an empty user header.
OPENERS = ("How do I", "How can I", "How does", "Why do", "Why is", "What is", "What are", "What should I",
           "Explain", "Write a", "Describe", "Give me", "Suggest", "Can you", "Tell me about", "Compare",
           "List", "Summarize", "What is the difference between", "Help me", "I want to", "Is it")


@torch.no_grad()
def sample_user_turns(model, processor, n: int, batch: int, openers: float = 0.0, seed: int = 0) -> list[str]:
    """User questions written by the model itself: the template up to the user's text, sampled at T=1;
    a share ``openers`` of them is made to start with one of :data:`OPENERS`."""
    tok = processor.tokenizer
    marker = "QQSPLITQQ"
    full = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": marker}]}],
                                         tokenize=False)
    prefix = full.split(marker)[0]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        starts = [rng.choice(OPENERS) if rng.random() < openers else "" for _ in range(batch)]
        enc = tok([prefix + s for s in starts], return_tensors="pt", padding=True, add_special_tokens=False).to(DEV)
        gen = model.generate(**enc, max_new_tokens=40, do_sample=True, temperature=1.0, top_p=0.95,
                             eos_token_id=end, pad_token_id=end)
        for start, row in zip(starts, gen[:, enc["input_ids"].shape[1]:]):
            ids = row.tolist()
            if end not in ids:
                continue  # cut mid-question: not a question a user would send
            text = (start + tok.decode(ids[: ids.index(end)], skip_special_tokens=True)).strip()
            if 8 <= len(text) <= 300:
                out.append(text)
    return out[:n]


@torch.no_grad()
def greedy_answers(model, processor, prompts: list[str], images: list | None, batch: int, max_new: int) -> list[list[int]]:
    """budget's greedy answer token ids (eos included when it stopped) for each prompt."""
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    answers: list[list[int]] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        if images is None:
            texts = [render(processor, [{"type": "text", "text": p}]) for p in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(DEV)
        else:
            texts = [render(processor, [{"type": "image"}, {"type": "text", "text": p}]) for p in chunk]
            enc = processor(text=texts, images=images[i: i + batch], return_tensors="pt", padding=True).to(DEV)
        gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=end)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            ids = row.tolist()
            answers.append(ids[: ids.index(end) + 1] if end in ids else ids)
        log(f"answered {min(i + batch, len(prompts))}/{len(prompts)}")
    return answers


def draft_sequences(processor, prompts: list[str], answers: list[list[int]], with_image: bool) -> list[tuple[list[int], int]]:
    """(ids, prompt length) as the runtime shows the draft: rendered prompt minus image tokens, then the answer."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    rows = []
    for p, a in zip(prompts, answers):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": p}]
        ids = [t for t in tok(render(processor, content), add_special_tokens=False)["input_ids"] if t != image_id]
        if a:
            rows.append((ids + a, len(ids)))
    return rows


def shapes_questions(data: Path, n: int, seed: int) -> tuple[list[str], list]:
    """First question of n shapes-world samples, with their images."""
    from PIL import Image

    samples = json.loads((data / "train.json").read_text())
    random.Random(seed).shuffle(samples)
    questions, images = [], []
    for s in samples[:n]:
        first = next(c for c in s["conversations"] if c["from"] == "human")  # not the system turn
        q = first["value"].replace("<image>", "").strip()
        questions.append(q)
        images.append(Image.open(data / s["image"]).convert("RGB"))
    return questions, images


def build_draft(lm_dir: Path, hidden: int, layers: int):
    """A small Llama on SmolLM2's vocabulary; embedding (tied head) = PCA of SmolLM2's embedding."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    base = json.loads((lm_dir / "config.json").read_text())
    heads = hidden // 64
    config = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=64, max_position_embeddings=base["max_position_embeddings"],
                         rope_parameters=base.get("rope_parameters", {"rope_type": "default", "rope_theta": 100000.0}),
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=base.get("bos_token_id"),
                         eos_token_id=base.get("eos_token_id"), pad_token_id=base.get("pad_token_id"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    weights = load_file(str(lm_dir / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"].float().to(DEV)  # (V, 576)
    centred = emb - emb.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=hidden, center=False)  # v: (576, hidden)
    small = centred @ v  # (V, hidden)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_((small / small.std() * 0.05).cpu())
    return model


def slice_draft(model_dir: Path, lm_dir: Path, layers: list[int]):
    """budget's own LM cut down to ``layers`` (e.g. 0,1,2,29) + its final norm and tied head: a draft that starts
    from SmolLM2's pretrained weights (and budget's LoRA) instead of from scratch. Why: the from-scratch drafts
    learnt budget's answers to the prompts they saw and little else (held-out agreement 0.45-0.65)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(lm_dir)
    config.num_hidden_layers = len(layers)
    config.layer_types = None if getattr(config, "layer_types", None) is None else \
        [config.layer_types[i] for i in layers]
    draft = LlamaForCausalLM(config)
    weights = load_file(str(model_dir / "model.safetensors"))
    prefix = next(k for k in weights if k.endswith("embed_tokens.weight")).rsplit("embed_tokens.weight", 1)[0]
    state = {"model.embed_tokens.weight": weights[prefix + "embed_tokens.weight"][: config.vocab_size],
             "model.norm.weight": weights[prefix + "norm.weight"]}
    for new, old in enumerate(layers):
        for key, value in weights.items():
            if key.startswith(f"{prefix}layers.{old}."):
                state[f"model.layers.{new}." + key[len(f"{prefix}layers.{old}."):]] = value
    missing, unexpected = draft.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise SystemExit(f"slice draft: missing {missing[:5]}, unexpected {unexpected[:5]}")
    draft.tie_weights()
    return draft.float()


def pad_batch(chunk: list[tuple[list[int], int]], max_len: int, pad: int):
    """Right-padded (ids, mask, labels), each (B, T); labels only on answer tokens; long rows keep their end."""
    length = min(max_len, max(len(ids) for ids, _ in chunk))
    ids = torch.full((len(chunk), length), pad, dtype=torch.long)
    labels = torch.full((len(chunk), length), -100, dtype=torch.long)
    mask = torch.zeros((len(chunk), length), dtype=torch.long)
    for b, (seq, n_prompt) in enumerate(chunk):
        cut = seq[-length:]
        n_prompt = max(0, n_prompt - (len(seq) - len(cut)))
        ids[b, : len(cut)] = torch.tensor(cut)
        mask[b, : len(cut)] = 1
        labels[b, n_prompt: len(cut)] = torch.tensor(cut[n_prompt:])
    return ids, mask, labels


def batches(rows: list[tuple[list[int], int]], size: int, max_len: int, pad: int, rng: random.Random):
    """Endless shuffled padded batches."""
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield pad_batch([rows[j] for j in order[i: i + size]], max_len, pad)


def answer_counts(rows: list[tuple[list[int], int]]):
    """How often each id occurs in the answers of ``rows``; most common first is the reduced head's order."""
    from collections import Counter

    return Counter(t for ids, n_prompt in rows for t in ids[n_prompt:])


@torch.no_grad()
def agreement(model, rows: list[tuple[list[int], int]], pad: int, head: list[int] | None = None) -> float:
    """Teacher-forced top-1 agreement with budget's greedy answer tokens (a proxy for acceptance);
    ``head``: the draft's argmax taken over those ids only, as a reduced-head export would."""
    model.eval()
    hit = total = 0
    index = torch.tensor(head, device=DEV) if head else None
    for i in range(0, len(rows), 64):
        ids, mask, labels = pad_batch(rows[i: i + 64], 512, pad)
        logits = model(input_ids=ids.to(DEV), attention_mask=mask.to(DEV)).logits  # (B, T, V)
        pred = logits[:, :-1].argmax(-1) if index is None else index[logits[:, :-1, index].argmax(-1)]  # (B, T-1)
        gold = labels[:, 1:].to(DEV)
        keep = gold != -100
        hit += int((pred[keep] == gold[keep]).sum())
        total += int(keep.sum())
    model.train()
    return hit / max(1, total)


def kl_to_teacher(teacher, ids, mask, labels, logits):
    """Mean KL(teacher || draft) over answer positions: soft targets carry the teacher's second choices,
    which hard greedy labels throw away (DistillSpec). ``logits``: the draft's (B, T, V)."""
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
    keep = labels[:, 1:] != -100  # (B, T-1): positions that predict an answer token
    vocab = logits.shape[-1]  # budget's vocabulary has <image> appended; the draft never predicts it
    t_logp = torch.log_softmax(t_logits[:, :-1, :vocab][keep].float(), -1)  # (N, V)
    d_logp = torch.log_softmax(logits[:, :-1][keep].float(), -1)  # (N, V)
    return (t_logp.exp() * (t_logp - d_logp)).sum(-1).mean()


def adamw_cosine(model, lr: float, steps: int, weight_decay: float):
    """AdamW (betas 0.9 / 0.95) with a linear warm-up over 1/30 of ``steps`` and a cosine decay to 0."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    warm = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    return opt, sched


def optimizer_step(loss, model, opt, sched) -> None:
    """Backward, clip the gradient norm to 1, step the optimizer and the schedule."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(), sched.step(), opt.zero_grad(set_to_none=True)


def train(model, rows, held: dict, steps: int, batch: int, lr: float, pad: int, teacher=None,
          kl_rows: int = 0, save=None, head: list[int] | None = None) -> list[dict]:
    """Cross-entropy on budget's greedy answers; with ``teacher``, plus KL to its logits on the first
    ``kl_rows`` rows (the text rows: the teacher sees no image here, so image rows keep hard labels only).
    ``save(model)`` runs at every agreement check, so a run killed by a time limit still leaves a draft."""
    model.to(DEV).train()
    opt, sched = adamw_cosine(model, lr, steps, weight_decay=0.01)
    history = []
    start = time.time()
    text_rows, image_rows = rows[:kl_rows], rows[kl_rows:]
    text_share = len(text_rows) / len(rows)
    streams = {"text": batches(text_rows, batch, 512, pad, random.Random(1)) if text_rows else None,
               "image": batches(image_rows, batch, 512, pad, random.Random(2)) if image_rows else None}
    pick = random.Random(3)
    for step in range(steps):
        kind = "text" if streams["image"] is None or (streams["text"] and pick.random() < text_share) else "image"
        ids, mask, labels = (t.to(DEV) for t in next(streams[kind]))
        with torch.autocast(DEV, dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            loss = out.loss
            if teacher is not None and kind == "text":
                loss = loss + kl_to_teacher(teacher, ids, mask, labels, out.logits)
        optimizer_step(loss, model, opt, sched)
        if step % 250 == 0 or step == steps - 1:
            row = {"step": step, "loss": round(loss.item(), 4), "kind": kind, "s": round(time.time() - start, 1)}
            if step % 1000 == 0 or step == steps - 1:
                row.update({k: round(agreement(model, v, pad), 4) for k, v in held.items()})
                if head:
                    row.update({f"{k}_head{len(head)}": round(agreement(model, v, pad, head), 4)
                                for k, v in held.items()})
                if save is not None:
                    save(model)
            history.append(row)
            log(json.dumps(row))
    return history


def io_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The inputs and outputs every draft-training script takes: SmolLM2's GGUF, shapes scenes, work and out dirs."""
    ap.add_argument("--gguf", required=True), ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True), ap.add_argument("--out", required=True)
    return ap


def main() -> None:
    ap = io_arguments(argparse.ArgumentParser())
    ap.add_argument("--text-prompts", type=int, default=12000), ap.add_argument("--image-prompts", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=4000), ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--sizes", default="256x2,384x3", help="HIDDENxLAYERS from scratch, or L0.1.2.29: budget's "
                    "own LM layers 0, 1, 2 and 29 + norm + head (pretrained start)")
    ap.add_argument("--openers", type=float, default=0.0, help="share of sampled user turns started with OPENERS")
    ap.add_argument("--general-reps", type=int, default=4, help="times general_prompts.txt joins the prompts")
    ap.add_argument("--kl", action="store_true", help="add KL to budget's logits on text rows (logit distillation)")
    ap.add_argument("--head-size", type=int, default=8192, help="head rows the agreement check also scores")
    ap.add_argument("--resume", action="store_true", help="start each draft from the one saved in --out")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True), out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model, processor, model_dir, lm_dir = budget_teacher(Path(a.gguf), work)
    log(f"budget assembled in {time.time() - t0:.0f} s")
    cache = work / "draft_data.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
    else:
        general = [p.strip() for p in GENERAL_PROMPTS.read_text().splitlines() if p.strip()]
        user = sample_user_turns(model, processor, a.text_prompts, min(1024, a.text_prompts), a.openers) \
            + general * a.general_reps
        log(f"{len(user)} text prompts, e.g. {user[:3]}")
        text_answers = greedy_answers(model, processor, user, None, 1024, 192)
        questions, images = shapes_questions(Path(a.data), a.image_prompts, 0)
        image_answers = greedy_answers(model, processor, questions, images, 512, 64)
        data = {"text": draft_sequences(processor, user, text_answers, False),
                "image": draft_sequences(processor, questions, image_answers, True),
                "examples": [[user[i], processor.tokenizer.decode(text_answers[i])] for i in range(min(5, len(user)))]
                + [[questions[i], processor.tokenizer.decode(image_answers[i])] for i in range(min(5, len(questions)))]}
        cache.write_text(json.dumps(data))
    log(f"data: {len(data['text'])} text + {len(data['image'])} image sequences ({time.time() - t0:.0f} s); "
        f"examples {data['examples'][:2]} {data['examples'][5:7]}")
    if a.kl:
        model = model.to(torch.bfloat16)  # the teacher's logits only; bf16 halves their memory
    else:
        del model
        model = None
    if DEV == "cuda":
        torch.cuda.empty_cache()
    rng = random.Random(0)
    for key in ("text", "image"):
        rng.shuffle(data[key])
    n_held = {k: min(300, len(data[k]) // 5) for k in ("text", "image")}
    held = {f"agree_{k}": data[k][:n] for k, n in n_held.items()}
    text_rows = data["text"][n_held["text"]:]
    rows = text_rows + data["image"][n_held["image"]:] * 2
    if len(rows) < a.batch:
        raise SystemExit(f"only {len(rows)} training sequences for batch {a.batch}")
    pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    counts = answer_counts(rows)
    frequent = [t for t, _ in counts.most_common()]
    covered = {n: round(sum(counts[t] for t in frequent[:n]) / max(1, sum(counts.values())), 4)
               for n in (2048, 4096, 8192, 16384)}
    log(f"answer tokens covered by the N most frequent ids: {covered}")
    report = {"examples": data["examples"], "kl": a.kl, "steps": a.steps, "head_coverage": covered, "drafts": {}}
    for size in a.sizes.split(","):  # HIDDENxLAYERS (from scratch) or L0.1.2.29 (budget's own layers, cut)
        target = out / f"draft-{size}"
        if a.resume and (target / "config.json").is_file():
            from transformers import LlamaForCausalLM

            draft = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
            log(f"draft {size}: resumed from {target}")
        elif size.startswith("L"):
            draft = slice_draft(Path(model_dir), lm_dir, [int(x) for x in size[1:].split(".")])
        else:
            draft = build_draft(lm_dir, *map(int, size.split("x")))
        params = sum(p.numel() for p in draft.parameters())
        log(f"draft {size}: {params / 1e6:.1f} M parameters")

        def save(m, target=target) -> None:
            half = {k: v.half() for k, v in m.state_dict().items()  # fp16 on disk; training goes on in fp32
                    if not (k == "lm_head.weight" and m.config.tie_word_embeddings)}  # tied: stored once
            m.save_pretrained(target, state_dict=half)
            processor.tokenizer.save_pretrained(target)
            (target / "draft_head.json").write_text(json.dumps({"head_ids": frequent}))

        history = train(draft, rows, held, a.steps, a.batch, a.lr, pad, model, len(text_rows), save,
                        frequent[: a.head_size])
        report["drafts"][size] = {"params_m": round(params / 1e6, 2), "history": history}
    (out / "draft_report.json").write_text(json.dumps(report, indent=1))
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
