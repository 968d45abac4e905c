"""``llavakit bench``: llavakit's OpenVINO engine against its peers, side by side in one run.

What is compared (DESIGN.md, "Measuring speed"), each engine in its own
subprocess (``bench_workers.py``) so its peak memory is its own:

1. llavakit INT4 vs ``openvino_genai.VLMPipeline`` on the *same* exported IR,
   with GenAI's default paged-attention backend (``ATTENTION_BACKEND="PA"``,
   continuous batching) and with ``"SDPA"``: decode tokens/s, peak RSS, time to
   first token for a cold request (an image and a question not seen before) and
   a warm one (the same image and question again).
2. llavakit vs transformers ``generate`` (fp32 and bf16) on the HF checkpoint.
3. The bandwidth floor: the machine's measured memory read bandwidth over the
   bytes of LM weights one decoded token reads (from the exported IR; the
   embedding table is gathered, not streamed, and lives in its own IR anyway).
4. The language model alone, on fixed prompt token ids, against llama.cpp
   Q4_K_M and Q4_0 of the same LM weights (``llavakit.eval.llamacpp_peer``),
   when llama.cpp is installed.

Everything is reported as ratios llavakit / peer with the absolute numbers
beside them, on a rich table and as JSON + Markdown (``--out``). Models are
random-weight ("bench-1b": CLIP ViT-B/32 at 224 px + TinyLlama-1.1B shapes;
speed does not depend on weight values), built and exported once into the work
directory and reused by later runs. ``quick=True`` uses a tiny shape for tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError

#: Benchmark shapes (bench_workers.shapes builds them; the parent never imports torch) and the
#: export each races on (CompressionOptions fields: llavakit's defaults, INT4 LM + INT8 vision).
SHAPES: dict[str, dict] = {
    "bench-1b": {"weights": "int4"},
    # --quick: a tiny 4-layer shape; weight-only INT8 vision skips PTQ calibration to keep tests fast.
    "quick": {"weights": "int4", "vision": "int8_weights"},
}


#: Peers, in the order they run. "floor" is the bandwidth measurement, "llamacpp" the LM-only race.
PEERS = ("genai-pa", "genai-sdpa", "transformers-fp32", "transformers-bf16", "floor", "llamacpp")
QUICK_PEERS = ("genai-sdpa", "transformers-fp32", "floor")

#: Levers (optional, ``levers=[...]``): each measured on the LM-only workload beside the default.
#: Runtime levers are OpenVINO compile properties; export levers are CompressionOptions changes.
LEVERS: dict[str, dict] = {
    "kv-f16": {"properties": {"KV_CACHE_PRECISION": "f16"}},
    "kv-f32": {"properties": {"KV_CACHE_PRECISION": "f32"}},
    "dynq-off": {"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}},
    "dynq-128": {"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}},
    "int4-r1-g64": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 64}},
    "int4-r1-g128": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 128}},
    "int4-all-layers": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 128, "all_layers": True}},
    "int8": {"export": {"weights": "int8"}},
}
LLAMACPP_QUANTS = ("Q4_K_M", "Q4_0")
PROMPT_TOKENS = 128  # the LM-only prompt (comparison 4 and levers)


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llavakit" / "bench"


# --- the run --------------------------------------------------------------------------------------
def run_bench(
    out: str | Path | None = None,
    peers: list[str] | None = None,
    repeats: int = 3,
    max_new_tokens: int = 64,
    work_dir: str | Path | None = None,
    quick: bool = False,
    levers: list[str] | None = None,
    rounds: int = 1,
    timeout_s: int = 1800,
    console: Any = None,
) -> dict:
    """Benchmark llavakit against its peers on the bench-1b shape; print a table, write JSON + Markdown.

    ``peers``: any of genai-pa, genai-sdpa, transformers-fp32, transformers-bf16,
    floor, llamacpp (default: all; ``quick``: genai-sdpa, transformers-fp32, floor).
    ``repeats`` cold + warm requests per engine (medians reported), each of
    ``max_new_tokens`` tokens (eos ignored). ``rounds`` > 1 runs the engines in
    turn that many times, so a burst of background load hits all of them.
    ``work_dir`` caches the built and exported models (default
    ~/.cache/llavakit/bench). ``quick`` uses a tiny 4-layer shape (tests).
    ``levers``: extra variants measured on the LM alone: {levers}.
    Returns the report (also written to ``out``/bench.json and bench.md).
    """
    from rich.console import Console

    console = console or Console()
    shape = "quick" if quick else "bench-1b"
    export_options = SHAPES[shape]
    peers = list(peers) if peers is not None else list(QUICK_PEERS if quick else PEERS)
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise LlavakitError(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    levers = list(levers or [])
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise LlavakitError(f"unknown lever(s) {unknown}; choose from {list(LEVERS)}")
    if repeats < 1 or max_new_tokens < 2 or rounds < 1:
        raise LlavakitError("repeats and rounds must be >= 1 and max_new_tokens >= 2")
    root = Path(work_dir).expanduser() if work_dir else default_work_dir()
    root = root / shape
    started = time.time()
    runner = _Runner(root, timeout_s, console)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"shape": shape, "export": export_options, "peers": peers, "repeats": repeats, "rounds": rounds,
                     "max_new_tokens": max_new_tokens, "levers": levers, "work_dir": str(root),
                     "prompt_tokens_lm_only": PROMPT_TOKENS},
        "engines": {}, "errors": {}, "notes": [],
    }
    report["notes"].append(
        "llavakit has no ignore-eos option: the benchmark empties the engine's eos set "
        "(Pipeline.backend.eos_token_ids) so every engine generates exactly max_new_tokens.")

    built = runner.task("build", "build", {"root": str(root), "shape": shape})
    if "error" in built:
        return _finish(report, runner, out, started, console)
    report["settings"].update(lm_shape=built["lm_shape"], vision_shape=built["vision_shape"])
    exported = runner.task("export", "export", _export_spec(root, built["llava"], export_options))
    if "error" in exported:
        return _finish(report, runner, out, started, console)
    report["export"] = {"dir": exported["export_dir"], "lm_weights": exported["lm_weights"],
                        "parts": exported["report"].get("parts"), "options": exported["report"].get("options")}
    export_dir = exported["export_dir"]
    common = {"repeats": repeats, "max_new_tokens": max_new_tokens}

    if "floor" in peers:
        report["bandwidth"] = runner.task("bandwidth", "bandwidth",
                                          {"size_gb": 0.4 if quick else 1.5, "passes": 3 if quick else 5})

    vlm_engines = [("llavakit", "llavakit", {"export_dir": export_dir})]
    for peer in peers:
        if peer.startswith("genai-"):
            vlm_engines.append((peer, "genai", {"export_dir": export_dir,
                                                "attention_backend": peer.split("-")[1].upper()}))
        elif peer.startswith("transformers-"):
            vlm_engines.append((peer, "transformers", {"hf_dir": built["llava"], "dtype": peer.split("-")[1],
                                                       "repeats": max(1, min(repeats, 2))}))
    for r in range(rounds):
        for name, task, spec in vlm_engines:
            runner.task(name, task, {**common, **spec}, round_=r)

    if "llamacpp" in peers or levers:
        ids = prompt_ids(PROMPT_TOKENS, vocab=built["lm_vocab"])
        lm_common = {"prompt_ids": ids, "n_decode": max_new_tokens, "repeats": repeats}
        llamacpp_ok = "llamacpp" in peers and _llamacpp_available(report)
        for r in range(rounds):
            runner.task("llavakit-lm", "llavakit_lm", {**lm_common, "export_dir": export_dir}, round_=r)
            if llamacpp_ok:
                for quant in LLAMACPP_QUANTS:
                    runner.task(f"llamacpp-{quant}", "llamacpp",
                                {**lm_common, "quant": quant, "lm_dir": built["lm"], "work_dir": str(root / "gguf"),
                                 "n_threads": os.cpu_count() or 1}, round_=r)
        for lever in levers:
            spec = LEVERS[lever]
            lever_dir = export_dir
            if "export" in spec:
                lever_export = runner.task(f"export:{lever}", "export",
                                           _export_spec(root, built["llava"], {**export_options, **spec["export"]}))
                if "error" in lever_export:
                    continue
                lever_dir = lever_export["export_dir"]
                report.setdefault("lever_exports", {})[lever] = {"dir": lever_dir,
                                                                 "lm_weights": lever_export["lm_weights"]}
            runner.task(f"lever:{lever}", "llavakit_lm",
                        {**lm_common, "export_dir": lever_dir, "properties": spec.get("properties", {})})
    return _finish(report, runner, out, started, console)


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    """Fixed prompt token ids for the LM-only race: BOS then ids drawn from the ordinary vocabulary."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = min(100, vocab // 4)
    return [1] + [int(i) for i in rng.integers(low, vocab - 2, size=n - 1)]


def _export_spec(root: Path, source: str, options: dict) -> dict:
    key = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
    label = "-".join(f"{k}={v}" for k, v in sorted(options.items()) if k != "weights")
    name = f"{options.get('weights', 'int4')}-{key}"
    return {"source": source, "out": str(root / "exports" / name), "options": options, "label": label}


def _llamacpp_available(report: dict) -> bool:
    if util.find_spec("llavakit.eval.llamacpp_peer") is None:
        report["notes"].append("llama.cpp peer skipped: llavakit.eval.llamacpp_peer is not present.")
        return False
    if util.find_spec("llama_cpp") is None:
        report["notes"].append("llama.cpp peer skipped: llama-cpp-python is not installed "
                               "(pip install llama-cpp-python).")
        return False
    return True


# --- subprocesses ---------------------------------------------------------------------------------
class _Runner:
    """Run worker tasks in subprocesses; keep results per engine (rounds merged) and errors."""

    def __init__(self, root: Path, timeout_s: int, console: Any) -> None:
        self.root, self.timeout_s, self.console = root, timeout_s, console
        self.results: dict[str, list[dict]] = {}
        self.errors: dict[str, str] = {}

    def task(self, name: str, task: str, spec: dict, round_: int = 0) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        label = name if round_ == 0 else f"{name} (round {round_ + 1})"
        with tempfile.TemporaryDirectory(prefix="llavakit-bench-") as tmp:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(json.dumps(spec))
            command = [sys.executable, "-m", "llavakit.eval.bench_workers", task, str(spec_path), str(result_path)]
            start = time.perf_counter()
            with self.console.status(f"[bold]bench[/]: {label}..."):
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s,
                                          env=_worker_env())
                    log = (done.stdout or "") + (done.stderr or "")
                except subprocess.TimeoutExpired as exc:
                    done, log = None, f"timed out after {self.timeout_s} s\n{exc.stderr or ''}"
            elapsed = time.perf_counter() - start
            if done is not None and result_path.is_file():
                result = json.loads(result_path.read_text())
            else:
                tail = log.strip().splitlines()[-5:]
                result = {"error": f"worker exited with {getattr(done, 'returncode', 'timeout')}: " + " | ".join(tail)}
        result["wall_s"] = elapsed
        if task == "genai":
            result["pa_fallback"] = "Falling back to SDPA" in log
        if "error" in result:
            self.errors[name] = result["error"]
            self.console.print(f"[red]bench: {label} failed[/] ({elapsed:.0f} s): {result['error']}")
        else:
            self.console.print(f"bench: {label} done in {elapsed:.0f} s")
        self.results.setdefault(name, []).append(result)
        return result


def _worker_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _merge_rounds(results: list[dict]) -> dict:
    """One engine's rounds as one result: runs concatenated, medians recomputed, peak RSS the max."""
    from llavakit.eval.bench_workers import _median, summarize

    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    if len(ok) == 1:
        return ok[0]
    merged = dict(ok[0])
    runs = [run for r in ok for run in r.get("runs", [])]
    merged["runs"] = runs
    for key in ("load_s", "wall_s", "prefill_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        if key in merged:
            merged[key] = _median([r.get(key) for r in ok])
    merged["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in ok)
    if runs and "ttft_s" in runs[0]:
        merged.update(summarize(runs))
    merged["rounds"] = len(ok)
    return merged


# --- the report -----------------------------------------------------------------------------------
#: (metric key, label, unit, which is better)
_VLM_METRICS = (
    ("decode_tokens_per_s", "decode", "tok/s", "higher"),
    ("ttft_s_cold", "TTFT cold", "s", "lower"),
    ("ttft_s_warm", "TTFT warm", "s", "lower"),
    ("peak_rss_mb", "peak RSS", "MiB", "lower"),
)
_LM_METRICS = (
    ("prefill_s", "prefill", "s", "lower"),
    ("decode_tokens_per_s", "decode", "tok/s", "higher"),
    ("peak_rss_mb", "peak RSS", "MiB", "lower"),
)


def _finish(report: dict, runner: _Runner, out: str | Path | None, started: float, console: Any) -> dict:
    engines = {name: _merge_rounds(results) for name, results in runner.results.items()
               if name not in ("build", "export", "bandwidth") and not name.startswith("export:")}
    report["engines"] = engines
    report["errors"] = dict(runner.errors)
    report["prepare"] = {name: {"wall_s": runner.results[name][-1].get("wall_s")}
                         for name in runner.results if name in ("build", "export") or name.startswith("export:")}
    report["comparisons"] = _comparisons(engines)
    report["ratios"] = {c["peer"]: {} for c in report["comparisons"]}
    for c in report["comparisons"]:
        report["ratios"][c["peer"]][c["metric"]] = c["ratio"]
    report["floor"] = _floor(report, engines)
    report["levers"] = _levers(report, engines)
    for name, result in engines.items():
        if result.get("pa_fallback"):
            report["notes"].append(f"{name}: GenAI fell back from paged attention to SDPA.")
    report["elapsed_s"] = time.time() - started
    print_report(report, console)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "bench.md").write_text(markdown_report(report))
        console.print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return report


def _comparisons(engines: dict) -> list[dict]:
    rows = []
    ours = engines.get("llavakit", {})
    for peer in ("genai-pa", "genai-sdpa", "transformers-fp32", "transformers-bf16"):
        theirs = engines.get(peer)
        if not theirs or "error" in ours or "error" in theirs:
            continue
        for key, label, unit, better in _VLM_METRICS:
            rows.append(_row("vlm", peer, key, label, unit, better, ours.get(key), theirs.get(key)))
    ours = engines.get("llavakit-lm", {})
    for quant in LLAMACPP_QUANTS:
        theirs = engines.get(f"llamacpp-{quant}")
        if not theirs or "error" in ours or "error" in theirs:
            continue
        for key, label, unit, better in _LM_METRICS:
            rows.append(_row("lm", f"llamacpp-{quant}", key, label, unit, better,
                             ours.get(key), theirs.get(key)))
    return [r for r in rows if r["ratio"] is not None]


def _row(group: str, peer: str, key: str, label: str, unit: str, better: str, ours, theirs) -> dict:
    ratio = ours / theirs if ours is not None and theirs else None
    ahead = None if ratio is None else (ratio > 1) == (better == "higher")
    return {"group": group, "peer": peer, "metric": key, "label": label, "unit": unit, "better": better,
            "llavakit": ours, "peer_value": theirs, "ratio": ratio, "llavakit_ahead": ahead}


def _floor(report: dict, engines: dict) -> dict | None:
    bandwidth = report.get("bandwidth")
    lm = report.get("export", {}).get("lm_weights")
    if not bandwidth or "error" in bandwidth or not lm:
        return None
    gbps = bandwidth["best_gbps"]
    per_token = lm["streamed_bytes"]
    floor_tps = gbps * 1e9 / per_token
    fractions = {}
    for name in ("llavakit", "genai-pa", "genai-sdpa", "llavakit-lm"):
        rate = engines.get(name, {}).get("decode_tokens_per_s")
        if rate:
            fractions[name] = {"decode_tokens_per_s": rate, "fraction_of_floor": rate / floor_tps}
    for quant in LLAMACPP_QUANTS:
        result = engines.get(f"llamacpp-{quant}", {})
        rate, nbytes = result.get("decode_tokens_per_s"), result.get("streamed_bytes")
        if rate and nbytes:
            own_floor = gbps * 1e9 / nbytes
            fractions[f"llamacpp-{quant}"] = {"decode_tokens_per_s": rate, "bytes_per_token": nbytes,
                                              "floor_tokens_per_s": own_floor, "fraction_of_floor": rate / own_floor}
    return {"bandwidth_gbps": gbps, "bandwidth_single_thread_gbps": bandwidth["single_thread_gbps_median"],
            "bandwidth_all_threads_gbps": bandwidth["all_threads_gbps_median"],
            "bytes_per_token": per_token, "lm_head_bytes": lm["lm_head_bytes"], "gathered_bytes": lm["gathered_bytes"],
            "floor_tokens_per_s": floor_tps, "engines": fractions}


def _levers(report: dict, engines: dict) -> list[dict]:
    base = engines.get("llavakit-lm")
    if not base or "error" in base or not report["settings"]["levers"]:
        return []
    floor = report.get("floor") or {}
    gbps = floor.get("bandwidth_gbps")
    rows = []
    base_bytes = report["export"]["lm_weights"]["streamed_bytes"]
    for lever in ["(default)"] + report["settings"]["levers"]:
        result = base if lever == "(default)" else engines.get(f"lever:{lever}")
        if not result or "error" in result:
            rows.append({"lever": lever, "error": (result or {}).get("error", "not run")})
            continue
        nbytes = report.get("lever_exports", {}).get(lever, {}).get("lm_weights", {}).get("streamed_bytes", base_bytes)
        row = {"lever": lever, "spec": LEVERS.get(lever, {}), "prefill_s": result["prefill_s"],
               "decode_tokens_per_s": result["decode_tokens_per_s"], "bytes_per_token": nbytes,
               "decode_vs_default": result["decode_tokens_per_s"] / base["decode_tokens_per_s"],
               "prefill_vs_default": result["prefill_s"] / base["prefill_s"]}
        if gbps:
            row["fraction_of_floor"] = result["decode_tokens_per_s"] / (gbps * 1e9 / nbytes)
        rows.append(row)
    return rows


def machine_info() -> dict:
    """CPU, cores, memory and the versions of every engine's packages."""
    cpu = platform.processor() or ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu.strip(" x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "f16c", "fma"))]
    except OSError:
        pass
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20  # GiB
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for package in ("llavakit", "openvino", "openvino-genai", "openvino-tokenizers", "nncf", "torch", "transformers",
                    "numpy", "llama_cpp_python"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": flags, "memory_gib": memory,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "loadavg_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "tok/s":
        return f"{value:.2f} tok/s" if value < 100 else f"{value:.0f} tok/s"
    return f"{value:.3g}"


def _reading(row: dict) -> str:
    ratio = row["ratio"]
    if row["better"] == "higher":
        factor, word = (ratio, "faster") if ratio >= 1 else (1 / ratio, "slower")
    elif row["unit"] == "MiB":
        factor, word = (1 / ratio, "less") if ratio <= 1 else (ratio, "more")
    else:
        factor, word = (1 / ratio, "faster") if ratio <= 1 else (ratio, "slower")
    return f"{factor:.2f}× {word}"


def _table_rows(report: dict, group: str) -> list[tuple[str, ...]]:
    return [(c["peer"], c["label"], _fmt(c["llavakit"], c["unit"]), _fmt(c["peer_value"], c["unit"]),
             f"{c['ratio']:.2f}", _reading(c)) for c in report["comparisons"] if c["group"] == group]


_GROUPS = {
    "vlm": "image + question, same IR / same checkpoint",
    "lm": "language model alone, same prompt token ids",
}


def print_report(report: dict, console: Any) -> None:
    """The comparison tables, the bandwidth floor, the levers, and any errors."""
    from rich.table import Table

    m = report["machine"]
    for group, title in _GROUPS.items():
        rows = _table_rows(report, group)
        if not rows:
            continue
        table = Table(title=f"llavakit vs peers: {title} ({report['settings']['shape']}, {m['cpu']}, "
                            f"{m['cores']} cores)")
        for column in ("peer", "metric", "llavakit", "peer value", "llavakit/peer", "llavakit is"):
            table.add_column(column, justify="right" if column != "peer" else "left")
        previous = None
        for row in rows:
            if previous is not None and row[0] != previous:
                table.add_section()
            table.add_row(*row)
            previous = row[0]
        console.print(table)
    floor = report.get("floor")
    if floor:
        t = Table(title=f"decode vs the bandwidth floor ({floor['bandwidth_gbps']:.1f} GB/s measured; "
                        f"{floor['bytes_per_token'] / 1e6:.0f} MB of LM weights per token → "
                        f"{floor['floor_tokens_per_s']:.1f} tok/s)")
        for column in ("engine", "decode", "floor", "fraction of floor"):
            t.add_column(column)
        for name, e in floor["engines"].items():
            t.add_row(name, _fmt(e["decode_tokens_per_s"], "tok/s"),
                      _fmt(e.get("floor_tokens_per_s", floor["floor_tokens_per_s"]), "tok/s"),
                      f"{e['fraction_of_floor']:.0%}")
        console.print(t)
    if report.get("levers"):
        t = Table(title="levers (LM alone, same prompt ids)")
        for column in ("lever", "prefill", "decode", "decode vs default", "MB/token", "fraction of floor"):
            t.add_column(column)
        for row in report["levers"]:
            if "error" in row:
                t.add_row(row["lever"], "error", row["error"][:60], "", "", "")
                continue
            t.add_row(row["lever"], _fmt(row["prefill_s"], "s"), _fmt(row["decode_tokens_per_s"], "tok/s"),
                      f"{row['decode_vs_default']:.2f}", f"{row['bytes_per_token'] / 1e6:.0f}",
                      f"{row['fraction_of_floor']:.0%}" if "fraction_of_floor" in row else "—")
        console.print(t)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {note}")
    for name, error in report["errors"].items():
        console.print(f"[red]error[/] {name}: {error}")


def markdown_report(report: dict) -> str:
    """The same content as :func:`print_report`, as Markdown, with the machine and the absolute numbers."""
    m, s = report["machine"], report["settings"]
    lines = [f"# llavakit bench — {s['shape']}", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib'] or 0:.0f} GiB, "
             f"flags {' '.join(m['cpu_flags'])}; load average at start {m['loadavg_at_start']:.2f}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
             f"- settings: repeats {s['repeats']}, rounds {s['rounds']}, max_new_tokens {s['max_new_tokens']} "
             f"(eos ignored), export {s['export']}, date {m['date']}, took {report['elapsed_s'] / 60:.1f} min", "",
             ]
    for group, title in _GROUPS.items():
        rows = _table_rows(report, group)
        if rows:
            lines += [f"## llavakit vs peers: {title}", "",
                      "| peer | metric | llavakit | peer | llavakit/peer | llavakit is |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
    floor = report.get("floor")
    if floor:
        lines += ["", f"Bandwidth floor: {floor['bandwidth_gbps']:.1f} GB/s measured (best of numpy sums; "
                      f"median single-thread {floor['bandwidth_single_thread_gbps']:.1f}, all threads "
                      f"{floor['bandwidth_all_threads_gbps']:.1f}); {floor['bytes_per_token'] / 1e6:.1f} MB of LM "
                      f"weights read per token (LM head {floor['lm_head_bytes'] / 1e6:.1f} MB) → floor "
                      f"{floor['floor_tokens_per_s']:.1f} tok/s.", "",
                  "| engine | decode | floor | fraction of floor |", "| --- | --- | --- | --- |"]
        for name, e in floor["engines"].items():
            lines.append(f"| {name} | {_fmt(e['decode_tokens_per_s'], 'tok/s')} | "
                         f"{_fmt(e.get('floor_tokens_per_s', floor['floor_tokens_per_s']), 'tok/s')} | "
                         f"{e['fraction_of_floor']:.0%} |")
    if report.get("levers"):
        lines += ["", "| lever | prefill | decode | decode vs default | MB/token | fraction of floor |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in report["levers"]:
            if "error" in row:
                lines.append(f"| {row['lever']} | error: {row['error'][:80]} | | | | |")
                continue
            lines.append(f"| {row['lever']} | {_fmt(row['prefill_s'], 's')} | {_fmt(row['decode_tokens_per_s'], 'tok/s')}"
                         f" | {row['decode_vs_default']:.2f} | {row['bytes_per_token'] / 1e6:.0f} | "
                         + (f"{row['fraction_of_floor']:.0%}" if "fraction_of_floor" in row else "—") + " |")
    lines += ["", "Per engine (medians):", "", "| engine | load | peak RSS | TTFT cold | TTFT warm | decode | prompt tokens |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in report["engines"].items():
        if "error" in e:
            lines.append(f"| {name} | error: {e['error'][:100]} | | | | | |")
            continue
        lines.append(f"| {name} | {_fmt(e.get('load_s'), 's')} | {_fmt(e.get('peak_rss_mb'), 'MiB')} | "
                     f"{_fmt(e.get('ttft_s_cold', e.get('prefill_s')), 's')} | {_fmt(e.get('ttft_s_warm'), 's')} | "
                     f"{_fmt(e.get('decode_tokens_per_s'), 'tok/s')} | "
                     f"{e.get('prompt_tokens_cold', e.get('prompt_tokens', '—'))} |")
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    for name, error in report["errors"].items():
        lines += ["", f"Error in {name}: {error}"]
    return "\n".join(lines) + "\n"


run_bench.__doc__ = (run_bench.__doc__ or "").replace("{levers}", ", ".join(LEVERS))
