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
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError
from llavakit.eval.bench_report import markdown_report, print_report

#: Benchmark shapes (bench_workers.shapes builds them; the parent never imports torch) and the
#: export each races on (CompressionOptions fields: llavakit's defaults, INT4 LM + INT8 vision).
SHAPES: dict[str, dict] = {
    "bench-1b": {"weights": "int4"},
    # --quick: a tiny 4-layer shape; weight-only INT8 vision skips PTQ calibration to keep tests fast.
    "quick": {"weights": "int4", "vision": "int8_weights"},
}


#: Peers, in the order they run. "floor" is the bandwidth measurement, "llamacpp" the LM-only race.
PEERS = ("genai-pa", "genai-sdpa", "transformers-fp32", "transformers-bf16", "floor", "llamacpp", "llavakit-llamacpp")
QUICK_PEERS = ("genai-sdpa", "transformers-fp32", "floor")

#: Levers (optional, ``levers=[...]``): each measured on the LM-only workload beside the default.
#: Runtime levers are OpenVINO compile properties; export levers are CompressionOptions changes.
LEVERS: dict[str, dict] = {
    "kv-f16": {"properties": {"KV_CACHE_PRECISION": "f16"}},
    "kv-f32": {"properties": {"KV_CACHE_PRECISION": "f32"}},
    "dynq-off": {"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}},
    "dynq-128": {"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}},
    # the CPU plugin's own default on AMX / AVX512-BF16 CPUs, which the engine overrides with f32 for the LM
    # (runtime/ov_backend.lm_cpu_defaults): this row shows what that choice gains in decode and costs in prefill
    "bf16": {"properties": {"INFERENCE_PRECISION_HINT": "bf16"}},
    "int4-r1-g64": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 64}},
    "int4-r1-g128": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 128}},
    "int4-all-layers": {"export": {"weights": "int4", "ratio": 1.0, "group_size": 128, "all_layers": True}},
    "int8": {"export": {"weights": "int8"}},
    # the INT4 recipe that agreed best with fp32 on SmolLM2 (benchmarks/README.md): asymmetric, group 32,
    # AWQ + scale estimation on the exporter's default calibration; its agreement is scored beside Q4_K_M's
    "int4-asym-g32-awq": {"export": {"weights": "int4", "lm_mode": "int4_asym", "group_size": 32, "awq": True,
                                     "scale_estimation": True}},
    # the same with only 20% of the layers in 4 bit (the rest INT8): 92.1% agreement, above Q4_K_M's 91.0%
    "int4-asym-g32-awq-r02": {"export": {"weights": "int4", "lm_mode": "int4_asym", "group_size": 32, "ratio": 0.2,
                                         "awq": True, "scale_estimation": True}},
}
LLAMACPP_QUANTS = ("Q4_K_M", "Q4_0")
#: The GGUF type the llama.cpp LM backend races with (``llavakit-llamacpp``), and the types scored for agreement.
BACKEND_GGUF = "q4_k_m"
AGREEMENT_GGUFS = ("q4_k_m", "q4_0")
PROMPT_TOKENS = 128  # the LM-only prompt (comparison 4 and levers)
#: Background CPU share above which a measurement counts as disturbed (retried, then left out if possible).
DISTURBED = 0.15


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
    rounds: int | None = None,
    quiet_wait_s: float | None = None,
    timeout_s: int = 1800,
    console: Any = None,
) -> dict:
    """Benchmark llavakit against its peers on the bench-1b shape; print a table, write JSON + Markdown.

    ``peers``: any of genai-pa, genai-sdpa, transformers-fp32, transformers-bf16,
    floor, llamacpp (default: all; ``quick``: genai-sdpa, transformers-fp32, floor).
    ``repeats`` cold + warm requests per engine (medians reported), each of
    ``max_new_tokens`` tokens (eos ignored). ``rounds``: the engines run in turn this
    many times (default 2, 1 with ``quick``), so a burst of background load is
    spread over all of them; medians pool every round.
    ``work_dir`` caches the built and exported models (default
    ~/.cache/llavakit/bench). ``quick`` uses a tiny 4-layer shape (tests).
    ``levers``: extra variants measured on the LM alone: {levers}.
    ``quiet_wait_s``: before each measured engine, wait up to this long for the CPU to
    be under 25 % busy (shared machines; default 120 s, 0 with ``quick``); what other
    processes used during each engine's run is recorded either way.
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
    rounds = (1 if quick else 2) if rounds is None else rounds
    if repeats < 1 or max_new_tokens < 2 or rounds < 1:
        raise LlavakitError("repeats and rounds must be >= 1 and max_new_tokens >= 2")
    root = Path(work_dir).expanduser() if work_dir else default_work_dir()
    root = root / shape
    started = time.time()
    if quiet_wait_s is None:
        quiet_wait_s = 0.0 if quick else 120.0
    runner = _Runner(root, timeout_s, console, quiet_wait_s=quiet_wait_s)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"shape": shape, "export": export_options, "peers": peers, "repeats": repeats, "rounds": rounds,
                     "max_new_tokens": max_new_tokens, "levers": levers, "work_dir": str(root),
                     "quiet_wait_s": quiet_wait_s,
                     "prompt_tokens_lm_only": PROMPT_TOKENS},
        "engines": {}, "errors": {}, "notes": [],
    }
    report["notes"].append(
        "eos is ignored by every engine (llavakit and GenAI ignore_eos, transformers min_new_tokens), "
        "so each request decodes exactly max_new_tokens.")

    built = runner.task("build", "build", {"root": str(root), "shape": shape}, measured=False)
    if "error" in built:
        return _finish(report, runner, out, started, console)
    report["settings"].update(lm_shape=built["lm_shape"], vision_shape=built["vision_shape"])
    exported = runner.task("export", "export", _export_spec(root, built["llava"], export_options), measured=False)
    if "error" in exported:
        return _finish(report, runner, out, started, console)
    report["export"] = {"dir": exported["export_dir"], "lm_weights": exported["lm_weights"],
                        "parts": exported["report"].get("parts"), "options": exported["report"].get("options")}
    export_dir = exported["export_dir"]
    common = {"repeats": repeats, "max_new_tokens": max_new_tokens}

    bandwidth_spec = {"size_gb": 0.4 if quick else 1.5, "passes": 3 if quick else 5}
    vlm_engines = [("llavakit", "llavakit", {"export_dir": export_dir})]
    with_backend = "llavakit-llamacpp" in peers and _llamacpp_available(report)
    if with_backend:  # the same export plus the LLaVA's LM as a GGUF; vision and tokenizer stay OpenVINO
        lc = runner.task("lm_gguf", "lm_gguf", {"source": built["llava"], "export_dir": export_dir,
                                                "out": f"{export_dir}-llamacpp-{BACKEND_GGUF.upper()}",
                                                "qtype": BACKEND_GGUF}, measured=False)
        if "error" not in lc:
            report["llamacpp_export"] = {k: lc[k] for k in ("export_dir", "gguf", "gguf_bytes", "streamed_bytes")}
            vlm_engines.append(("llavakit-llamacpp", "llavakit", {"export_dir": lc["export_dir"],
                                                                  "backend": "llamacpp"}))
    for peer in peers:
        if peer.startswith("genai-"):
            vlm_engines.append((peer, "genai", {"export_dir": export_dir,
                                                "attention_backend": peer.split("-")[1].upper()}))
        elif peer.startswith("transformers-"):
            vlm_engines.append((peer, "transformers", {"hf_dir": built["llava"], "dtype": peer.split("-")[1],
                                                       "repeats": max(1, min(repeats, 2))}))
    for r in range(rounds):
        if "floor" in peers:  # once per round: background load only ever lowers it, the best round counts
            runner.task("bandwidth", "bandwidth", bandwidth_spec, round_=r)
        for name, task, spec in vlm_engines:
            runner.task(name, task, {**common, **spec}, round_=r)
    measured_bandwidth = [b for b in runner.results.get("bandwidth", []) if "error" not in b]
    if measured_bandwidth:
        report["bandwidth"] = max(measured_bandwidth, key=lambda b: b["best_gbps"])
        report["bandwidth"]["rounds_best_gbps"] = [b["best_gbps"] for b in measured_bandwidth]
    elif "bandwidth" in runner.results:
        report["bandwidth"] = runner.results["bandwidth"][-1]

    if "llamacpp" in peers or levers:
        ids = prompt_ids(PROMPT_TOKENS, vocab=built["lm_vocab"])
        lm_common = {"prompt_ids": ids, "n_decode": max_new_tokens, "repeats": repeats}
        quants = []
        if "llamacpp" in peers and _llamacpp_available(report):
            gguf = runner.task("gguf", "gguf", {"lm_dir": built["lm"], "work_dir": str(root / "gguf"),
                                                "quants": list(LLAMACPP_QUANTS)}, measured=False)
            quants = [] if "error" in gguf else list(LLAMACPP_QUANTS)
        lever_dirs = {}
        for lever in levers:  # prepare every lever's export first, then measure them side by side
            spec = LEVERS[lever]
            if "export" not in spec:
                lever_dirs[lever] = export_dir
                continue
            lever_export = runner.task(f"export:{lever}", "export",
                                       _export_spec(root, built["llava"], {**export_options, **spec["export"]}),
                                       measured=False)
            if "error" not in lever_export:
                lever_dirs[lever] = lever_export["export_dir"]
                report.setdefault("lever_exports", {})[lever] = {"dir": lever_export["export_dir"],
                                                                 "lm_weights": lever_export["lm_weights"]}
        for r in range(rounds):
            runner.task("llavakit-lm", "llavakit_lm", {**lm_common, "export_dir": export_dir}, round_=r)
            if with_backend and "llamacpp_export" in report:  # the backend on the peer's own workload
                runner.task("llavakit-llamacpp-lm", "llavakit_lm",
                            {**lm_common, "export_dir": report["llamacpp_export"]["export_dir"],
                             "backend": "llamacpp"}, round_=r)
            for quant in quants:
                runner.task(f"llamacpp-{quant}", "llamacpp",
                            {**lm_common, "quant": quant, "work_dir": str(root / "gguf"),
                             "n_threads": os.cpu_count() or 1}, round_=r)
            for lever, lever_dir in lever_dirs.items():
                runner.task(f"lever:{lever}", "llavakit_lm", {**lm_common, "export_dir": lever_dir,
                                                              "properties": LEVERS[lever].get("properties", {})},
                            round_=r)
    export_levers = {lever: LEVERS[lever]["export"] for lever in levers if "export" in LEVERS[lever]}
    if (with_backend or export_levers) and not quick:  # top-1 agreement needs a real LM: the demo's SmolLM2
        runner.task("agreement", "agreement", {"work_dir": str(root.parent), "levers": export_levers,
                                               "qtypes": list(AGREEMENT_GGUFS) if with_backend else []},
                    measured=False)
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
def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat ((0, 0) where unavailable)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy_share(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time that was busy over the next ``seconds`` (everyone's work)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else None


class _Runner:
    """Run worker tasks in subprocesses; keep results per engine (rounds merged) and errors.

    Other people's work on a shared machine skews timings, so before each measured engine
    the runner waits (up to ``quiet_wait_s``) for the CPU to be less than ``quiet_busy`` busy,
    and afterwards records how much CPU *other* processes used while the engine ran
    (machine busy time minus the worker's own CPU time): ``background_cpu_share``; above
    ``retry_busy`` the engine is measured once more.
    """

    def __init__(self, root: Path, timeout_s: int, console: Any, quiet_wait_s: float = 0.0,
                 quiet_busy: float = 0.25, retry_busy: float = DISTURBED) -> None:
        self.root, self.timeout_s, self.console = root, timeout_s, console
        self.quiet_wait_s, self.quiet_busy, self.retry_busy = quiet_wait_s, quiet_busy, retry_busy
        self.results: dict[str, list[dict]] = {}
        self.errors: dict[str, str] = {}

    def _wait_for_quiet(self, label: str) -> dict:
        start = time.perf_counter()
        busy = None
        with self.console.status(f"[bold]bench[/]: waiting for a quiet CPU before {label}..."):
            while True:
                busy = cpu_busy_share(2.0)
                if busy is None or busy < self.quiet_busy or time.perf_counter() - start >= self.quiet_wait_s:
                    break
                time.sleep(3.0)
        return {"busy_before": busy, "waited_s": time.perf_counter() - start}

    def task(self, name: str, task: str, spec: dict, round_: int = 0, measured: bool = True) -> dict:
        """Run one worker; a measured one that other processes disturbed (> ``retry_busy`` of the
        CPU) is run once more after waiting for quiet, and the less disturbed attempt is kept."""
        label = name if round_ == 0 else f"{name} (round {round_ + 1})"
        result = self._attempt(name, label, task, spec, measured)
        share = result.get("background_cpu_share") or 0.0
        if measured and self.quiet_wait_s > 0 and share > self.retry_busy and "error" not in result:
            self.console.print(f"bench: {label} ran while other processes used {share:.0%} of the CPU; once more")
            again = self._attempt(name, label, task, spec, measured)
            if "error" not in again and (again.get("background_cpu_share") or 0.0) < share:
                again["disturbed_attempt_background"] = share
                result = again
            else:
                result["retry_background"] = again.get("background_cpu_share")
        if "error" in result:
            self.errors[name] = result["error"]
        self.results.setdefault(name, []).append(result)
        return result

    def _attempt(self, name: str, label: str, task: str, spec: dict, measured: bool) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        quiet = self._wait_for_quiet(label) if measured and self.quiet_wait_s > 0 else {}
        with tempfile.TemporaryDirectory(prefix="llavakit-bench-") as tmp:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(json.dumps(spec))
            command = [sys.executable, "-m", "llavakit.eval.bench_workers", task, str(spec_path), str(result_path)]
            start = time.perf_counter()
            busy0, total0 = _cpu_times()
            child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            with self.console.status(f"[bold]bench[/]: {label}..."):
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s,
                                          env=_worker_env(), check=False)
                    log = (done.stdout or "") + (done.stderr or "")
                except subprocess.TimeoutExpired as exc:
                    done, log = None, f"timed out after {self.timeout_s} s\n{exc.stderr or ''}"
            elapsed = time.perf_counter() - start
            busy1, total1 = _cpu_times()
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done is not None and result_path.is_file():
                result = json.loads(result_path.read_text())
            else:
                tail = log.strip().splitlines()[-5:]
                result = {"error": f"worker exited with {getattr(done, 'returncode', 'timeout')}: " + " | ".join(tail)}
        result["wall_s"] = elapsed
        if total1 > total0:
            tick = os.sysconf("SC_CLK_TCK")
            own = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)  # seconds
            others = max(0.0, (busy1 - busy0) / tick - own)
            result["background_cpu_share"] = others / ((total1 - total0) / tick)
        result.update(quiet)
        if task == "genai":
            result["pa_fallback"] = "Falling back to SDPA" in log
        if "error" in result:
            self.console.print(f"[red]bench: {label} failed[/] ({elapsed:.0f} s): {result['error']}")
        else:
            self.console.print(f"bench: {label} done in {elapsed:.0f} s")
        return result


def _worker_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _merge_rounds(results: list[dict]) -> dict:
    """One engine's rounds as one result: runs pooled and medians taken over all of them, peak RSS the max."""
    from llavakit.eval.bench_workers import _median, summarize

    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    per_round = [{k: r.get(k) for k in ("decode_tokens_per_s", "prefill_s", "ttft_s_cold", "background_cpu_share",
                                        "wall_s")} for r in ok]
    # Rounds that other processes disturbed (even after a retry) are left out when a clean one exists.
    clean = [r for r in ok if (r.get("background_cpu_share") or 0.0) <= DISTURBED]
    dropped = len(ok) - len(clean) if clean else 0
    ok = clean or ok
    merged = dict(ok[0])
    merged.update(per_round=per_round, rounds=len(ok), dropped_rounds=dropped)
    if len(ok) == 1:
        return merged
    runs = [run for r in ok for run in r.get("runs", [])]
    merged["runs"] = runs
    merged["load_s"] = _median([r.get("load_s") for r in ok])
    merged["wall_s"] = sum(r.get("wall_s", 0.0) for r in ok)
    merged["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in ok)
    merged["background_cpu_share"] = max(r.get("background_cpu_share") or 0.0 for r in ok)
    if runs and "ttft_s" in runs[0]:  # VLM engines
        merged.update(summarize(runs))
    elif runs and "prefill_s" in runs[0]:  # llavakit on the LM alone
        measured = [run for run in runs if run["kind"] != "warmup"]
        for key in ("prefill_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
            merged[key] = _median([run[key] for run in measured])
    if "decode_runs_s" in merged:  # llama.cpp: its per-run times
        prefill = [t for r in ok for t in r["prefill_runs_s"]]
        decode = [r["n_decode"] / t for r in ok for t in r["decode_runs_s"]]
        merged.update(prefill_runs_s=prefill, prefill_s=_median(prefill), decode_tokens_per_s=_median(decode),
                      prefill_tokens_per_s=merged["n_prompt"] / _median(prefill))
    return merged


# --- the report -----------------------------------------------------------------------------------
#: (metric key, label, unit, which is better)
_VLM_METRICS = (
    ("decode_tokens_per_s", "decode", "tok/s", "higher"),
    ("ttft_s_cold", "TTFT cold", "s", "lower"),
    ("ttft_s_warm", "TTFT warm", "s", "lower"),
    ("ttft_s_followup", "TTFT same image, new question", "s", "lower"),
    ("peak_rss_mb", "peak RSS", "MiB", "lower"),
)
_LM_METRICS = (
    ("prefill_s", "prefill", "s", "lower"),
    ("decode_tokens_per_s", "decode", "tok/s", "higher"),
    ("peak_rss_mb", "peak RSS", "MiB", "lower"),
)


def _finish(report: dict, runner: _Runner, out: str | Path | None, started: float, console: Any) -> dict:
    prep = ("build", "export", "bandwidth", "gguf", "lm_gguf", "agreement")
    engines = {name: _merge_rounds(results) for name, results in runner.results.items()
               if name not in prep and not name.startswith("export:")}
    report["engines"] = engines
    report["errors"] = dict(runner.errors)
    report["prepare"] = {name: {"wall_s": runner.results[name][-1].get("wall_s")}
                         for name in runner.results if name in prep or name.startswith("export:")}
    if "agreement" in runner.results:
        report["agreement"] = runner.results["agreement"][-1]
    report["backend_choice"] = _record_backend_choice(report, engines)
    report["comparisons"] = _comparisons(engines)
    report["ratios"] = {c["peer"]: {} for c in report["comparisons"]}
    for c in report["comparisons"]:
        report["ratios"][c["peer"]][c["metric"]] = c["ratio"]
    report["floor"] = _floor(report, engines)
    report["levers"] = _levers(report, engines)
    busy = {name: r["background_cpu_share"] for name, r in engines.items() if r.get("background_cpu_share") is not None}
    if busy and max(busy.values()) > 0.1:
        report["notes"].append("other processes used CPU while engines ran (share of the machine): " + ", ".join(
            f"{name} {share:.0%}" for name, share in busy.items()) + "; ratios of engines with high shares are skewed.")
    dropped = {name: r["dropped_rounds"] for name, r in engines.items() if r.get("dropped_rounds")}
    if dropped:
        report["notes"].append("rounds left out because other processes disturbed them (a clean round was kept): "
                               + ", ".join(f"{name} {n}" for name, n in dropped.items()) + ".")
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
    ours = engines.get("llavakit-llamacpp", {})
    if ours and "error" not in ours:
        for peer in ("llavakit", "genai-pa", "genai-sdpa", "transformers-fp32", "transformers-bf16"):
            theirs = engines.get(peer)
            if theirs and "error" not in theirs:
                for key, label, unit, better in _VLM_METRICS:
                    rows.append(_row("backend", "llavakit-openvino" if peer == "llavakit" else peer, key, label,
                                     unit, better, ours.get(key), theirs.get(key)))
        for quant in LLAMACPP_QUANTS:
            theirs = engines.get(f"llamacpp-{quant}")
            if theirs and "error" not in theirs:
                for key, label, unit, better in _LM_METRICS[1:]:
                    rows.append(_row("backend", f"llamacpp-{quant} (LM only)", key, label, unit, better,
                                     ours.get(key), theirs.get(key)))
    ours = engines.get("llavakit-llamacpp-lm", {})
    if ours and "error" not in ours:  # like for like: the same prompt ids, no image, no chat template
        for quant in LLAMACPP_QUANTS:
            theirs = engines.get(f"llamacpp-{quant}")
            if theirs and "error" not in theirs:
                for key, label, unit, better in _LM_METRICS:
                    rows.append(_row("backend", f"llamacpp-{quant} (both LM only, same ids)", key, label, unit,
                                     better, ours.get(key), theirs.get(key)))
    return [r for r in rows if r["ratio"] is not None]


def _record_backend_choice(report: dict, engines: dict) -> dict | None:
    """Write which LM backend ``Pipeline(dir)`` should use on this machine (``runtime/backend_choice.py``).

    Only from a full-size run in which both of llavakit's backends were measured on the same export.
    """
    ov, lc = engines.get("llavakit", {}), engines.get("llavakit-llamacpp", {})
    if report["settings"]["shape"] == "quick" or not ov or not lc or "error" in ov or "error" in lc:
        return None
    from llavakit.runtime.backend_choice import record_choice

    keys = ("decode_tokens_per_s", "ttft_s_cold", "ttft_s_warm", "peak_rss_mb")
    pick = lambda e: {"decode_tokens_per_s": e.get("decode_tokens_per_s"), "ttft_cold_s": e.get("ttft_s_cold"),
                      **{k: e.get(k) for k in keys}}
    entry = record_choice(pick(ov), pick(lc), source=f"llavakit bench {report['settings']['shape']}")
    report["notes"].append(f"backend choice recorded for this machine: {entry['backend']} ({entry['reason']}); "
                           f"Pipeline(dir) with backend='auto' uses it where the export has a GGUF.")
    return entry


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
    rate, nbytes = engines.get("llavakit-llamacpp", {}).get("decode_tokens_per_s"), \
        report.get("llamacpp_export", {}).get("streamed_bytes")
    if rate and nbytes:
        own_floor = gbps * 1e9 / nbytes
        fractions["llavakit-llamacpp"] = {"decode_tokens_per_s": rate, "bytes_per_token": nbytes,
                                          "floor_tokens_per_s": own_floor, "fraction_of_floor": rate / own_floor}
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
               "prefill_vs_default": result["prefill_s"] / base["prefill_s"],
               "decode_per_round": [r.get("decode_tokens_per_s") for r in result.get("per_round", [])]}
        if gbps:
            row["fraction_of_floor"] = result["decode_tokens_per_s"] / (gbps * 1e9 / nbytes)
        rows.append(row)
    return rows


def machine_info() -> dict:
    """CPU, cores, memory and the versions of every engine's packages."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
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


run_bench.__doc__ = (run_bench.__doc__ or "").replace("{levers}", ", ".join(LEVERS))


def main(argv: list[str] | None = None) -> int:
    """``python -m llavakit.eval.bench``: the same as ``llavakit bench`` (for use before the CLI has it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llavakit.eval.bench", description=run_bench.__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write bench.json and bench.md here")
    parser.add_argument("--peer", action="append", dest="peers", default=None, help=f"repeatable; of {list(PEERS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lever", action="append", dest="levers", default=None, help=f"repeatable; of {list(LEVERS)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quiet-wait", type=float, default=None, dest="quiet_wait_s")
    args = parser.parse_args(argv)
    try:
        report = run_bench(**vars(args))
    except LlavakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
