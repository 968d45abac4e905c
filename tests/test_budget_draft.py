"""``budget-eagle``, the draft shipped for budget: loads by name, keeps greedy output, and is a trained draft.

The real budget model (built offline in the session's cache, as ``make demo`` does) with its committed EAGLE
draft: output with the draft equals plain greedy at the same OpenVINO settings, text and image, and the draft's
proposals are accepted often — an untrained or misaligned draft (wrong head ids, features of another model)
is accepted almost never, so the acceptance bound fails if the committed files stop fitting budget.
"""

from __future__ import annotations

import pytest

from llavakit import Pipeline
from llavakit.checkpoints.demo import EXAMPLE_IMAGE
from llavakit.errors import LlavakitError
from llavakit.runtime.speculative import VERIFY_PROPERTIES

PROMPTS = ["Explain what a recursive function is to a new programmer.", "Give me three ideas for a snowy day."]


@pytest.fixture(scope="module")
def budget_pair(demo_cache):
    spec = Pipeline("budget", weights="int8", draft="budget-eagle")  # the demo's export, cached
    plain = Pipeline(spec.model_dir, properties=VERIFY_PROPERTIES)  # the numbers the verifying model computes
    return spec, plain


def test_named_draft_keeps_greedy_output_and_is_accepted(budget_pair) -> None:
    spec, plain = budget_pair
    assert spec.speculative.k == 2  # the draft card's recommendation, no --draft-k given
    accepted = drafted = 0
    for prompt in PROMPTS:
        a = plain.generate(prompt, max_new_tokens=48)
        b = spec.generate(prompt, max_new_tokens=48)
        assert b.token_ids == a.token_ids, prompt
        accepted, drafted = accepted + b.speculative.accepted, drafted + b.speculative.drafted
    assert accepted / drafted > 0.3, f"{accepted}/{drafted}: the shipped draft no longer predicts budget"
    a = plain.generate("What is in this image?", [str(EXAMPLE_IMAGE)], max_new_tokens=24)
    b = spec.generate("What is in this image?", [str(EXAMPLE_IMAGE)], max_new_tokens=24)
    assert b.token_ids == a.token_ids and b.speculative.accepted >= 1


def test_named_draft_refuses_another_model() -> None:
    with pytest.raises(LlavakitError, match="trained for the model 'budget'"):
        Pipeline("nano", weights="int8", draft="budget-eagle")
