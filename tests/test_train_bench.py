"""The training-speed harness runs end to end on the tiny shape (CPU, 2 steps)."""

from llavakit.eval.train_bench import main


def test_train_bench_tiny(tmp_path):
    report = main(["--tiny", "--steps", "2", "--warmup", "0", "--batch", "2", "--out", str(tmp_path)])
    base, kit = report["results"]
    assert base["kind"] == "baseline" and kit["kind"] == "llavakit"
    assert base["samples_s"] > 0 and kit["samples_s"] > 0 and report["ratio_samples_s"] > 0
    assert len(base["losses"]) == 2 and len(kit["losses"]) == 2
    assert report["max_abs_loss_diff"] < 0.05  # same model, data and seed: same loss curve
    assert (tmp_path / "train_bench.json").is_file()
