"""Cold time to first token and decode of llavakit's OpenVINO engine at one LM inference precision.

    python benchmarks/ttft_precision.py EXPORT_DIR default|bf16|f32

Each request brings a new random image and a new question (a true cold request: only the chat
template's first tokens can come from the prefix cache); the first request (compilation) is dropped.
Run it once per precision in one session and compare the medians (benchmarks/README.md).
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
from PIL import Image

from llavakit import Pipeline

QUESTIONS = ("What is in this picture?", "Describe the colours you see.", "How many objects are there?",
             "Is it day or night?", "What is the main subject?", "Where might this be?",
             "Tell me a story about it.", "What could happen next?")


def main(export: str, precision: str) -> None:
    props = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    pipe = Pipeline(export, backend="openvino", properties=props)
    rng = np.random.default_rng(0)
    ttft, decode, rss = [], [], 0.0
    for i, question in enumerate(QUESTIONS):
        image = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))  # (224, 224, 3)
        m = pipe.generate(question, image, max_new_tokens=48).metrics
        if i:  # the first request compiles
            ttft.append(m.time_to_first_token_s)
            decode.append(m.decode_tokens_per_s)
        rss = m.peak_rss_mb
    print(f"{precision}: cold TTFT median {statistics.median(ttft):.3f} s, decode median "
          f"{statistics.median(decode):.1f} tok/s, peak RSS {rss:,.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
