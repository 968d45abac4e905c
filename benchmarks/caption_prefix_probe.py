"""Why a model miscaptions held-out pairs: force a caption prefix and look at what follows.

On test scenes whose leftmost object is one colour x shape pair (default: the held-out orange star), greedy-continue
each prefix ("A picture of a", "A picture of an", ...) and print the first words, plus P("a") / P("an") after
"A picture of". This is how budget v5's caption errors were traced to the article (benchmarks/training.md).

    .venv/bin/python benchmarks/caption_prefix_probe.py MODEL_DIR TEST_DIR [--pair orange,star] [--n 12]

MODEL_DIR: an HF-format LLaVA (e.g. the assembled budget in ~/.cache/llavakit/budget-*); TEST_DIR: a shapes-world
folder with test.json and images/ (``llavakit data shapes --test 1000``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

PREFIXES = ("A picture of a", "A picture of an", "A picture of a large")


def leftmost_is(sample: dict, pair: tuple[str, str]) -> bool:
    """Whether the scene's leftmost object (the one a caption names first) is ``pair``."""
    objs = sorted(sample["scene"]["objects"], key=lambda o: o["cx"])
    return bool(objs) and (objs[0]["color"], objs[0]["shape"]) == pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model"), ap.add_argument("test_dir")
    ap.add_argument("--pair", default="orange,star"), ap.add_argument("--n", type=int, default=12)
    a = ap.parse_args()
    pair = tuple(a.pair.split(","))
    proc = AutoProcessor.from_pretrained(a.model)
    model = LlavaForConditionalGeneration.from_pretrained(a.model).eval()
    tok = proc.tokenizer
    rows = [x for x in json.loads((Path(a.test_dir) / "test.json").read_text()) if leftmost_is(x, pair)][: a.n]
    print(f"{len(rows)} test scenes with a leftmost {' '.join(pair)}")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    head = proc.apply_chat_template(msgs, add_generation_prompt=True)
    images = [Image.open(Path(a.test_dir) / x["image"]).convert("RGB") for x in rows]
    articles = [tok.encode(w, add_special_tokens=False)[0] for w in (" a", " an")]
    for prefix in PREFIXES:
        outs = []
        for img in images:
            enc = proc(images=img, text=head + prefix, return_tensors="pt")
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=4, do_sample=False)  # (1, prompt + 4)
            outs.append(tok.decode(gen[0, enc["input_ids"].shape[1]:]).split(",")[0].split("<")[0].strip())
        print(f"{prefix!r} -> {outs}")
    for img in images:
        enc = proc(images=img, text=head + "A picture of", return_tensors="pt")
        with torch.no_grad():
            probs = model(**enc).logits[0, -1].softmax(-1)  # (V,)
        print("P(a), P(an) =", [round(float(probs[i]), 3) for i in articles])


if __name__ == "__main__":
    main()
