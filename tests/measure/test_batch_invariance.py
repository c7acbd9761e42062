"""The batch-invariance measure: its comparison, and no difference at all in float64."""

from __future__ import annotations

import pytest

from power_sampling.measure.batch_invariance import first_difference, markdown, run


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], [4]) == 0


def test_float64_rows_draw_the_same_alone_and_merged() -> None:
    pytest.importorskip("transformers")
    import torch

    from power_sampling.backends.transformers import TransformersBackend
    from power_sampling.testing import tiny_chat_model

    model, tokenizer = tiny_chat_model(seed=0)
    backend = TransformersBackend.from_transformers(model.to(torch.float64), tokenizer)
    report = run(backend, seeds=1, neighbours=2)
    assert {method: row["changed"] for method, row in report.items()} == {
        "standard": 0,
        "power": 0,
    }
    table = markdown(report, "cmd", 2, "tiny")
    assert "| standard |" in table and "| power |" in table
