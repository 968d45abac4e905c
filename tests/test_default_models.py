"""The embedded default models: nano is committed, loads by name, and its INT8 export answers held-out questions.

What the numbers mean (benchmarks/training.md): nano (tower pretrained on scene labels, then the LLaVA
stages) scores about 88% on the shapes-world test split, as INT8 on OpenVINO too; the 70% threshold on 40
unseen questions is far above what fixed prior answers ("yes", "1", the commonest colour) would score (about
15%), so it only passes if the committed weights look at the image and the INT8 export kept that. ``budget``: its committed parts stay small (its answers are
checked by the README's `make demo` test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llavakit.checkpoints.nano import nano_model_dir
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import ModelLoadError

HELD_OUT_SEED = 7  # training used seed 0; a different seed gives unseen scenes (and held-out colour-shape pairs)
N_QUESTIONS = 40


def test_nano_committed_and_small() -> None:
    d = nano_model_dir()
    total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert total <= 10 * 1024 * 1024, f"nano is {total / 2**20:.1f} MiB; the budget is 10 MB"
    assert resolve_source("nano") == d
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (d / name).is_file(), name


def test_nano_is_a_few_million_trained_parameters() -> None:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(nano_model_dir() / "model.safetensors"))
    n = sum(t.numel() for t in weights.values())
    assert 3e6 < n < 6e6
    assert all(t.dtype == torch.float16 for t in weights.values())


@pytest.fixture(scope="module")
def heldout_items(tmp_path_factory: pytest.TempPathFactory) -> list:
    from llavakit.data.shapes import ShapesConfig, generate_shapes
    from llavakit.eval.accuracy import load_items

    out = tmp_path_factory.mktemp("shapes-heldout")
    generate_shapes(out, ShapesConfig(train=0, val=0, test=N_QUESTIONS, seed=HELD_OUT_SEED), force=True)
    return load_items(out / "test.json")


def test_nano_int8_answers_heldout_questions(heldout_items: list, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported INT8 nano (OpenVINO, NNCF) must answer unseen scenes well above an untrained model."""
    from llavakit.eval.accuracy import pipeline_predictor, score_items
    from llavakit.runtime.pipeline import Pipeline

    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path))  # a real export, not a cached one
    pipe = Pipeline("nano", weights="int8")
    column = score_items(heldout_items, pipeline_predictor(pipe), "int8")
    overall = column.accuracy("overall")
    # nano v7 scores 90.0 here (93.6 on the full 1000-question test split); 80 leaves room for other CPUs' numerics
    assert overall is not None and overall >= 80.0, (overall, column.predictions[:10])
    yesno = [p for p in column.predictions if p["answer"] in ("yes", "no")]
    assert all(p["prediction"].strip().lower().rstrip(".") in ("yes", "no") for p in yesno), yesno


def test_budget_without_trained_parts_says_so() -> None:
    from llavakit.checkpoints.budget import budget_parts_dir

    try:
        budget_parts_dir()
    except ModelLoadError as exc:
        assert "budget" in str(exc) and "nano" in str(exc)
    else:  # parts are committed: they must be small (only the trained parts live in the repo)
        d = budget_parts_dir()
        total = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        assert total <= 20 * 1024 * 1024
