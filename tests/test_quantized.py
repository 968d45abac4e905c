"""INT8 / INT4 exports stay close to fp32: top-1 agreement on a real pretrained LM (SmolLM2-135M).

Random tiny weights make quantization checks meaningless (near-uniform logits), so
this uses the demo model, whose language model is the real SmolLM2-135M-Instruct.
Agreement is teacher-forced: at every step both models see the same prefix (the
fp32 model's greedy continuation) and we count equal argmaxes.
"""

from __future__ import annotations

import numpy as np
import pytest

from llavakit import Pipeline
from llavakit.runtime.prompt import user_content

pytest.importorskip("gguf")

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is 12 plus 7?",
    "Who wrote Romeo and Juliet?",
    "Give me a synonym for happy.",
    "What do bees make?",
    "How many days are in a week?",
]
STEPS = 12


def _reference(pipe: Pipeline) -> list[list[int]]:
    return [pipe.generate(p, max_new_tokens=STEPS).token_ids for p in PROMPTS]


def _agreement(pipe: Pipeline, references: list[list[int]]) -> float:
    backend, hits, total = pipe.backend, 0, 0
    for prompt, ref in zip(PROMPTS, references):
        prepared = backend.prepare([{"role": "user", "content": user_content(prompt, 0)}], [])
        logits = backend.prefill(prepared)
        for token in ref:
            hits += int(np.argmax(logits)) == token
            total += 1
            logits = backend.decode_one(token)
    return hits / total


@pytest.fixture(scope="module")
def demo_dir():
    from llavakit.checkpoints.demo import ensure_demo_model

    return ensure_demo_model()


# Measured: INT8 0.955+ on a Zen 3 (AVX2) CPU, 0.944 (84 of 89 tokens) on a Sapphire Rapids (AMX) one, with the
# plugin's defaults and with f32 compute alike: one near-tied argmax flips with the kernels. INT4: 0.83 here.
@pytest.mark.parametrize("weights,threshold", [("int8", 0.93), ("int4", 0.75)])
def test_compressed_language_model_keeps_top1(demo_dir, weights, threshold):
    references = _reference(Pipeline(demo_dir, backend="torch"))
    agreement = _agreement(Pipeline(demo_dir, weights=weights), references)
    print(f"{weights}: top-1 agreement with fp32 = {agreement:.3f}")
    assert agreement >= threshold
