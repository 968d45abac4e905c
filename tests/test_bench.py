"""``llavakit bench`` runs end to end (quick shape) and reports ratios; nothing here judges speed.

The benchmark is a measurement, not a timed test: these tests check that every
engine ran, that the report has its ratios, floor and machine record, and that
the pieces computing them (weight bytes per token, ratios) are right.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from llavakit.errors import LlavakitError
from llavakit.eval import bench, bench_report
from llavakit.eval.bench_workers import bench_image, lm_weight_bytes, question, summarize, workload


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path):
    out = tmp_path / "out"
    report = bench.run_bench(out=out, peers=["genai-sdpa", "floor"], repeats=1, max_new_tokens=8,
                             work_dir=tmp_path / "work", quick=True)
    data = json.loads((out / "bench.json").read_text())
    assert data["errors"] == {}, data["errors"]
    assert data == json.loads(json.dumps(report, default=str))
    assert set(data["ratios"]["genai-sdpa"]) == {"decode_tokens_per_s", "ttft_s_cold", "ttft_s_warm", "ttft_s_followup",
                                                 "peak_rss_mb"}
    assert all(value > 0 for value in data["ratios"]["genai-sdpa"].values())
    for name in ("llavakit", "genai-sdpa"):
        engine = data["engines"][name]
        assert engine["generated_tokens_cold"] == engine["generated_tokens_warm"] == 8  # eos ignored by both
        assert engine["prompt_tokens_cold"] == data["engines"]["llavakit"]["prompt_tokens_cold"]  # the same prompt
        assert engine["peak_rss_mb"] > 0
    ours = data["engines"]["llavakit"]
    assert ours["cached_tokens_warm"] > ours["cached_tokens_followup"] > ours["cached_tokens_cold"]  # image reused
    assert ours["prompt_tokens_followup"] != ours["prompt_tokens_cold"]  # a new question
    floor = data["floor"]
    assert floor["bandwidth_gbps"] > 0 and floor["bytes_per_token"] > 0
    assert 0 < floor["engines"]["llavakit"]["fraction_of_floor"]
    assert data["machine"]["versions"]["openvino"] and data["machine"]["cores"]
    markdown = (out / "bench.md").read_text()
    assert "| genai-sdpa | decode |" in markdown and "Bandwidth floor" in markdown

    # A rerun reuses the built and exported models (the work dir is a cache).
    export_dir = data["export"]["dir"]
    again = bench.run_bench(peers=[], repeats=1, max_new_tokens=2, work_dir=tmp_path / "work", quick=True)
    assert again["export"]["dir"] == export_dir and again["errors"] == {}
    assert again["prepare"]["export"]["wall_s"] < data["prepare"]["export"]["wall_s"]


def test_unknown_peer_or_lever_is_refused(tmp_path):
    with pytest.raises(LlavakitError, match="unknown peer.*'vllm'"):
        bench.run_bench(peers=["vllm"], work_dir=tmp_path)
    with pytest.raises(LlavakitError, match="unknown lever"):
        bench.run_bench(levers=["turbo"], work_dir=tmp_path)


def test_workload_is_new_per_cold_request_and_repeated_when_warm():
    from llavakit.eval.bench_workers import request_for

    steps = workload(3)
    assert [s["kind"] for s in steps] == ["warmup"] + ["cold", "warm", "followup"] * 3
    colds = [s["index"] for s in steps if s["kind"] == "cold"]
    assert len(set(colds)) == 3 and 0 not in colds
    assert [s["index"] for s in steps if s["kind"] == "warm"] == colds
    cold, warm, followup = steps[1:4]
    assert request_for(cold)[1] == request_for(warm)[1] != request_for(followup)[1]  # a new question
    assert np.array_equal(np.asarray(request_for(cold)[0]), np.asarray(request_for(followup)[0]))  # same image
    asked = {request_for(s)[1] for s in steps if s["kind"] != "warm"}
    assert len(asked) == len(steps) - 3  # no question repeats but the warm ones
    images = [np.asarray(bench_image(i)) for i in range(4)]
    assert all(not np.array_equal(images[0], im) for im in images[1:])
    assert np.array_equal(np.asarray(bench_image(2)), images[2])
    assert len({question(i) for i in range(30)}) == 30


def test_summarize_takes_medians_of_cold_and_warm_runs():
    runs = [{"kind": "warmup", "ttft_s": 9.0, "decode_tokens_per_s": 1.0}]
    runs += [{"kind": "cold", "ttft_s": t, "decode_tokens_per_s": d} for t, d in [(3.0, 10), (1.0, 30), (2.0, 20)]]
    runs += [{"kind": "warm", "ttft_s": 0.1, "decode_tokens_per_s": 40}]
    summary = summarize(runs)
    assert summary["ttft_s_cold"] == 2.0 and summary["ttft_s_warm"] == 0.1
    assert summary["decode_tokens_per_s"] == 25.0  # median of cold and warm, warm-up left out


def test_ratios_and_readings():
    engines = {
        "llavakit": {"decode_tokens_per_s": 20.0, "ttft_s_cold": 1.0, "ttft_s_warm": 0.1, "peak_rss_mb": 900.0},
        "genai-pa": {"decode_tokens_per_s": 10.0, "ttft_s_cold": 2.0, "ttft_s_warm": 0.05, "peak_rss_mb": 1800.0},
        "transformers-bf16": {"error": "boom"},
    }
    rows = {(c["peer"], c["metric"]): c for c in bench._comparisons(engines)}
    assert {peer for peer, _ in rows} == {"genai-pa"}
    assert rows["genai-pa", "decode_tokens_per_s"]["ratio"] == 2.0
    assert bench_report._reading(rows["genai-pa", "decode_tokens_per_s"]) == "2.00× faster"
    assert bench_report._reading(rows["genai-pa", "ttft_s_cold"]) == "2.00× faster"
    assert bench_report._reading(rows["genai-pa", "ttft_s_warm"]) == "2.00× slower"
    assert bench_report._reading(rows["genai-pa", "peak_rss_mb"]) == "2.00× less"
    assert rows["genai-pa", "ttft_s_warm"]["llavakit_ahead"] is False


def test_lm_weight_bytes_counts_streamed_weights_not_gathered_tables(tmp_path):
    """A toy IR: an embedding table (Gather), an INT8 matrix with its decompression, and a head MatMul."""
    rng = np.random.default_rng(0)
    ids = ops.parameter([1, -1], ov.Type.i64, name="ids")
    table = ops.constant(rng.standard_normal((4096, 256)).astype(np.float32))  # 4 MiB, gathered
    x = ops.gather(table, ids, ops.constant(0))  # (1, T, 256)
    w8 = ops.constant(rng.integers(0, 255, size=(512, 256), dtype=np.uint8))  # 128 KiB, streamed
    scale = ops.constant(np.full((512, 1), 0.01, dtype=np.float32))
    w = ops.multiply(ops.convert(w8, ov.Type.f32), scale)
    h = ops.matmul(x, w, transpose_a=False, transpose_b=True)  # (1, T, 512)
    head = ops.constant(rng.standard_normal((1000, 512)).astype(np.float16))  # ~1 MiB, streamed
    logits = ops.matmul(h, ops.convert(head, ov.Type.f32), transpose_a=False, transpose_b=True)
    logits.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([logits], [ids])
    ov.save_model(model, tmp_path / "lm.xml", compress_to_fp16=False)
    stats = lm_weight_bytes(tmp_path / "lm.xml")
    assert stats["gathered_bytes"] == 4096 * 256 * 4
    assert stats["lm_head_bytes"] == 1000 * 512 * 2
    assert stats["lm_head_weight_type"] == "f16"
    assert stats["streamed_bytes_by_type"]["u8"] == 512 * 256
    assert stats["streamed_bytes"] == 512 * 256 + 512 * 4 + 1000 * 512 * 2 + stats["streamed_bytes_by_type"].get("i64", 0)


def test_bench_module_does_not_import_torch():
    code = "import sys, llavakit.eval.bench; assert 'torch' not in sys.modules and 'openvino' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rounds_pool_runs_and_leave_out_disturbed_rounds():
    def round_(ttfts, decode, background):
        runs = [{"kind": "cold", "index": 1, "ttft_s": t, "decode_tokens_per_s": decode} for t in ttfts]
        return {"runs": runs, "peak_rss_mb": 100.0 + background, "background_cpu_share": background, "load_s": 1.0,
                **summarize(runs)}  # what a worker returns

    merged = bench._merge_rounds([round_([1.0, 3.0], 10.0, 0.01), round_([2.0], 20.0, 0.02)])
    assert merged["ttft_s_cold"] == 2.0 and merged["decode_tokens_per_s"] == 10.0  # medians over pooled runs
    assert merged["rounds"] == 2 and merged["dropped_rounds"] == 0 and merged["peak_rss_mb"] == 100.02
    merged = bench._merge_rounds([round_([9.0], 1.0, 0.5), round_([2.0], 20.0, 0.02)])
    assert merged["ttft_s_cold"] == 2.0 and merged["dropped_rounds"] == 1
    assert [r["background_cpu_share"] for r in merged["per_round"]] == [0.5, 0.02]  # both still on record
    merged = bench._merge_rounds([round_([9.0], 1.0, 0.5), {"error": "boom"}])
    assert merged["ttft_s_cold"] == 9.0 and merged["dropped_rounds"] == 0  # nothing clean: kept, and noted
