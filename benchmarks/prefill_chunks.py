"""Prefill time of an exported LM by how the rows are cut into calls (the engine's ``PREFILL_CHUNK``).

    python benchmarks/prefill_chunks.py EXPORT_DIR [--rows 72,80,88,96,128,200] [--repeats 6]

Each measurement: reset the KV state, prefill 8 rows (the cached template head of a real request), then
time the prefill of ROWS more rows cut as: one call; 64 + remainder; balanced chunks of at most 64, 48 and 32
rows (``runtime/ov_backend.py prefill_chunks``). The cuts of one repeat run back to back, so a noisy
moment hits them alike; the medians are printed. Random embeddings: only the time matters here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openvino as ov

from llavakit.export import layout
from llavakit.runtime.ov_backend import keep_last_logits, lm_cpu_defaults, prefill_chunks

CUTS = {"one call": lambda rows: [rows],
        "64 + rest": lambda rows: [64] * (rows // 64) + ([rows % 64] if rows % 64 else []),
        "balanced <= 64": lambda rows: prefill_chunks(rows, 64),
        "balanced <= 48": lambda rows: prefill_chunks(rows, 48),
        "balanced <= 32": lambda rows: prefill_chunks(rows, 32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--rows", default="72,80,88,96,128,200")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    core = ov.Core()
    model = keep_last_logits(core.read_model(args.export / layout.LANGUAGE_MODEL))
    request = core.compile_model(model, "CPU", lm_cpu_defaults(core, "CPU")).create_infer_request()
    width = model.input("inputs_embeds").get_partial_shape()[2].get_length()
    rng = np.random.default_rng(0)

    def run(embeds: np.ndarray, start: int) -> None:
        rows = embeds.shape[1]
        request.infer({"inputs_embeds": embeds, "attention_mask": np.ones((1, start + rows), np.int64),
                       "position_ids": np.arange(start, start + rows)[None], "beam_idx": np.zeros(1, np.int32)})

    def timed(sizes: list[int]) -> float:
        request.reset_state()
        run((rng.standard_normal((1, 8, width)) * 0.02).astype(np.float32), 0)  # (1, 8, D) template head
        embeds = (rng.standard_normal((1, sum(sizes), width)) * 0.02).astype(np.float32)  # (1, T, D)
        begin, done = time.perf_counter(), 0
        for rows in sizes:
            run(embeds[:, done:done + rows], 8 + done)
            done += rows
        return time.perf_counter() - begin

    for rows in (int(r) for r in args.rows.split(",")):
        times: dict[str, list[float]] = {name: [] for name in CUTS}
        for _ in range(args.repeats):
            for name, cut in CUTS.items():
                times[name].append(timed(cut(rows)))
        print(f"{rows} rows: " + " | ".join(f"{name} {CUTS[name](rows)} {1000 * statistics.median(t):.0f} ms"
                                            for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
