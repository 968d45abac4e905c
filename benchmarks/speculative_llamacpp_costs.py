"""Would llama.cpp make a better speculative *target* than OpenVINO? Its verify costs and numerics, measured.

Why: on OpenVINO the target's verify pass is what caps speculative decoding on budget
(benchmarks/speculative.md): at the numerics that keep greedy output identical a pass of 2 / 3 tokens
costs 1.25 / 1.45 decode steps, and rejected tokens leave masked holes or cost a state copy. llama.cpp has
the two things OpenVINO lacks here: dropping rejected positions is ``llama_memory_seq_rm`` (no copy), and
its rows do not interact (activations are quantized per row), so an n-token pass may give each row exactly
the logits of a one-token step. This measures both on an export's LM GGUF (``llavakit export --lm-gguf``),
through :class:`~llavakit.runtime.llamacpp_backend.LlamaCppBackend`, so it is the engine's own llama.cpp:

- ``step_ms``: one token after a 200-token text prefix; ``pass_{n}_ms``: n tokens in one ``llama_decode``
  with logits of every row (what a verify pass needs), and ``pass_{n}_last_ms`` with the last row's only
  (so the difference is the LM head's share);
- ``max_abs_diff_{n}``: the largest difference between a pass's row logits and the same tokens fed one at a
  time, and the same for a 2-row pass right after a rejected pair was trimmed;
- ``trim_us``: the cost of dropping one position.

    .venv/bin/python benchmarks/speculative_llamacpp_costs.py EXPORT_DIR --gguf q4_0 [--out X.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import numpy as np

from llavakit.runtime.llamacpp_backend import LlamaCppBackend

PREFIX = 200  # text positions before the measured passes
TOKENS = [2000, 2001, 2002, 2003, 2004, 2005]  # arbitrary ids, the same in every pass


class Probe:
    """Raw ``llama_decode`` calls on a backend's context: n tokens at a position, logits of all rows or the last."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.be, self.lib = backend, backend._lib

    def feed(self, tokens: list[int], start: int, all_rows: bool) -> np.ndarray:
        """Decode ``tokens`` at ``start..``; logits (n, V) if ``all_rows`` else the last row's (V,)."""
        n, batch = len(tokens), self.be._tokens
        batch.fill(start, tokens=np.asarray(tokens), logits_last=True)
        if all_rows:
            flags = np.ones(n, dtype=np.int8)  # (n,) logits for every row
            ctypes.memmove(batch.raw.logits, flags.ctypes.data, n)
        self.be._decode(batch)
        if not all_rows:
            return self.be._logits()
        ptr = self.lib.llama_get_logits(self.be._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.be.n_vocab)).copy()  # (n, V)

    def keep(self, n: int) -> None:
        """Drop every position from ``n`` on (what rejecting drafted tokens costs)."""
        self.lib.llama_memory_seq_rm(self.be._memory, 0, n, -1)


def median_ms(fn, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model_dir: Path, gguf: str | None) -> dict:
    backend = LlamaCppBackend(model_dir, gguf=gguf)
    probe = Probe(backend)
    backend.reset()
    probe.feed(list(range(1000, 1000 + PREFIX)), 0, all_rows=False)
    single = np.stack([probe.feed([t], PREFIX + i, all_rows=False) for i, t in enumerate(TOKENS)])  # (6, V)
    out: dict = {"gguf": backend.gguf_path.name, "n_threads": backend.n_threads}
    for n in (2, 3, 4, 5):
        probe.keep(PREFIX)
        rows = probe.feed(TOKENS[:n], PREFIX, all_rows=True)  # (n, V)
        out[f"max_abs_diff_{n}"] = float(np.abs(rows - single[:n]).max())
    probe.keep(PREFIX)
    probe.feed(TOKENS[:1] + [999, 998], PREFIX, all_rows=True)  # one accepted, two rejected
    probe.keep(PREFIX + 1)
    rows = probe.feed(TOKENS[1:3], PREFIX + 1, all_rows=True)
    out["max_abs_diff_after_trim"] = float(np.abs(rows - single[1:3]).max())

    def timed(n: int, all_rows: bool) -> float:
        def once() -> None:
            probe.keep(PREFIX)
            probe.feed(TOKENS[:n], PREFIX, all_rows)
        return round(median_ms(once), 3)

    out["step_ms"] = timed(1, False)
    for n in (2, 3, 4, 5):
        out[f"pass_{n}_ms"] = timed(n, True)
        out[f"pass_{n}_last_ms"] = timed(n, False)
        out[f"pass_{n}_steps"] = round(out[f"pass_{n}_ms"] / out["step_ms"], 2)
    probe.keep(PREFIX)
    probe.feed(TOKENS[:2], PREFIX, all_rows=False)
    out["trim_us"] = round(median_ms(lambda: probe.keep(PREFIX + 1)) * 1e3, 1)
    backend.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path, help="an export with an LM GGUF (llavakit export --lm-gguf TYPE)")
    ap.add_argument("--gguf", action="append", help="GGUF type(s) in the export to measure (default: the best one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = [measure(args.model_dir, g) for g in (args.gguf or [None])]
    for r in results:
        print(json.dumps(r))
    if args.out:
        args.out.write_text(json.dumps({"model_dir": str(args.model_dir), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                        time.gmtime()), "results": results}, indent=1))


if __name__ == "__main__":
    main()
