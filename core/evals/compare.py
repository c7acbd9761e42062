"""Compare sampling methods on the same problems: a markdown table and an accuracy-latency plot.

    results = compare(sampler, "gsm8k", limit=20, output_dir="eval_results")
    print(results.table)          # also in eval_results/gsm8k-compare.md
    # the plot: eval_results/gsm8k-compare.png

Every method is one :func:`~power_sampling.evals.runner.evaluate` run with the same settings
except ``method``, written to ``<output_dir>/<task>-<method>.jsonl``, so an interrupted comparison
resumes where it stopped. The methods follow the paper's Table 1 (arXiv 2601.21590): standard
sampling (temperature 1), low temperature (1/alpha), best-of-N by base log-likelihood, MCMC power
sampling (Karan & Du) and scalable power sampling.

Every method is also compared with scalable power sampling, and every other one with standard
decoding (with neither, with the first method), on the same problems, paired: the difference in
pass@1 of the first samples with a 95% interval, and McNemar's exact test on the problems where
exactly one of the two is correct.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import Backend
from ..config import METHODS, PowerSamplingConfig
from ..samplers.power_sampler import PowerSampler
from .problems import Task
from .runner import as_sampler, evaluate
from .stats import CI_METHOD, CONFIDENCE, EvalSummary, statistics_module
from .tasks import get_task

logger = logging.getLogger(__name__)

COMPARE_METHODS: tuple[str, ...] = ("standard", "low_temperature", "best_of_n", "mcmc", "power")
"""The methods compared by default, cheapest first."""


def method_label(method: str, config: PowerSamplingConfig) -> str:
    """A short name with the setting that defines the method, e.g. ``best-of-N (N=8)``."""
    labels = {
        "standard": "standard (T=1)",
        "low_temperature": f"low temperature (T=1/{config.alpha:g})",
        "best_of_n": f"best-of-N (N={config.best_of})",
        "mcmc": f"MCMC power (alpha={config.alpha:g}, {config.mcmc_steps} steps)",
        "power": f"scalable power (alpha={config.alpha:g}, K={config.top_k}, "
        f"M={config.num_rollouts})",
        "smc": f"Power-SMC (alpha={config.alpha:g}, N={config.num_particles})",
    }
    return labels.get(method, method)


@dataclass
class CompareResult:
    summaries: list[EvalSummary]
    table: str
    """The markdown table and the paired comparisons (also written to ``table_path``)."""
    paired: list[Paired]
    table_path: Path
    plot_path: Path | None
    """None when matplotlib is not installed."""


def compare(
    model: PowerSampler | Backend | str | None,
    task: Task | str,
    config: PowerSamplingConfig | None = None,
    methods: Sequence[str] = COMPARE_METHODS,
    *,
    output_dir: str | Path = "eval_results",
    limit: int | None = None,
    samples: int = 1,
    batch_size: int = 8,
    chat: bool | None = None,
    name: str | None = None,
    progress: bool = False,
    workers: int = 4,
    plot: bool = True,
) -> CompareResult:
    """Evaluate each of ``methods`` on the same problems with the same settings (``config``, or
    the sampler's), then write ``<task>-compare.md`` and ``<task>-compare.png`` into
    ``output_dir``. The other arguments are :func:`evaluate`'s."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"methods={list(methods)!r} is invalid: use one or more of {', '.join(METHODS)}"
        )
    sampler = as_sampler(model, config)
    config = config or sampler.config
    if isinstance(task, str):
        task = get_task(task, seed=0 if config.seed is None else config.seed)
    folder = Path(output_dir)
    summaries, correct = [], {}
    for method in dict.fromkeys(methods):
        logger.info("Evaluating %s on %s", method, task.name)
        result = evaluate(
            sampler,
            task,
            config.replace(method=method),
            limit=limit,
            samples=samples,
            output=folder / f"{task.name}-{method}.jsonl",
            batch_size=batch_size,
            chat=chat,
            name=name,
            progress=progress,
            workers=workers,
        )
        summaries.append(result.summary)
        correct[method] = {r["id"]: bool(r["correct"]) for r in result.records}
    # Every method against power sampling, then the rest against standard decoding.
    references: list[str] = [m for m in ("power", "standard") if m in correct]
    references = references or [next(iter(correct))]
    table = markdown_table(summaries)
    paired: list[Paired] = []
    shown: set[str] = set()
    for reference in references:
        shown.add(reference)
        group = [
            paired_comparison(method, reference, correct[method], correct[reference])
            for method in correct
            if method not in shown
        ]
        if group:
            table += "\n\n" + paired_table(group)
        paired += group
    table_path = folder / f"{task.name}-compare.md"
    table_path.write_text(table + "\n", encoding="utf-8")
    plot_path = None
    if plot:
        try:
            plot_path = plot_accuracy_latency(summaries, folder / f"{task.name}-compare.png")
        except ImportError:
            logger.warning(
                "matplotlib is not installed: no plot (pip install 'power-sampling[eval]')"
            )
    return CompareResult(summaries, table, paired, table_path, plot_path)


@dataclass(frozen=True)
class Paired:
    """``method`` against ``reference`` on the same problems (first sample of each)."""

    method: str
    reference: str
    problems: int
    only_method: int
    """Problems only ``method`` solved."""
    only_reference: int
    difference: float
    """pass@1 of ``method`` minus that of ``reference``."""
    ci_low: float
    ci_high: float
    p_value: float
    """McNemar's exact two-sided test (binomial on the discordant problems)."""


def paired_comparison(
    method: str, reference: str, a: dict[str, bool], b: dict[str, bool]
) -> Paired:
    """The paired difference of two methods' per-problem correctness (ids in both): a Wald
    interval for the difference of paired proportions and McNemar's exact p-value
    (``statsmodels.stats.contingency_tables.mcnemar``)."""
    ids = [i for i in a if i in b]
    if not ids:
        raise ValueError(f"{method} and {reference} share no problems to compare")
    n = len(ids)
    both = sum(a[i] and b[i] for i in ids)
    only_a = sum(a[i] and not b[i] for i in ids)
    only_b = sum(b[i] and not a[i] for i in ids)
    neither = n - both - only_a - only_b
    diff = (only_a - only_b) / n
    se = math.sqrt(max(only_a + only_b - n * diff * diff, 0.0)) / n
    z = float(statistics_module("scipy.stats").norm.ppf(0.5 + CONFIDENCE / 2))
    tables = statistics_module("statsmodels.stats.contingency_tables")
    p = float(tables.mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return Paired(method, reference, n, only_a, only_b, diff, diff - z * se, diff + z * se, p)


def paired_table(paired: Sequence[Paired]) -> str:
    """The paired comparisons as a markdown table."""
    lines = [
        f"Paired against {paired[0].reference} on the same problems (first sample each): "
        "difference in pass@1 with a 95% Wald interval, McNemar's exact test.",
        "",
        "| method | problems | only it solved | only reference solved | difference | 95% CI "
        "| p (McNemar) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in paired:
        lines.append(
            f"| {c.method} | {c.problems} | {c.only_method} | {c.only_reference} | "
            f"{c.difference:+.3f} | [{c.ci_low:+.3f}, {c.ci_high:+.3f}] | {c.p_value:.3g} |"
        )
    return "\n".join(lines)


def _config(summary: EvalSummary) -> PowerSamplingConfig:
    return PowerSamplingConfig(**summary.settings["config"])


def markdown_table(summaries: Sequence[EvalSummary]) -> str:
    """One row per method: pass@k, the pass@1 interval, latency and token costs."""
    if not summaries:
        raise ValueError("no summaries to tabulate")
    first = summaries[0]
    ks = sorted(first.pass_at_k)
    head = ["method", *(f"pass@{k}" for k in ks), "95% CI", "latency (s)", "s / problem"]
    head += ["completion tok", "candidate + rollout tok", "forward tok"]
    lines = [
        f"**{first.task}**, {first.problems} problems, {first.samples} sample(s) each, "
        f"model {first.model}, max {_config(first).max_new_tokens} new tokens. "
        f"CI: {CI_METHOD} for pass@1; token counts are means per generation.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for s in summaries:
        cells = [method_label(s.method, _config(s))]
        cells += [f"{s.pass_at_k[k]:.3f}" for k in ks]
        cells += [
            f"[{s.ci_low:.3f}, {s.ci_high:.3f}]",
            f"{s.latency_s:.1f}",
            f"{s.seconds_per_problem:.1f}",
            f"{s.completion_tokens:.0f}",
            f"{s.candidate_tokens + s.rollout_tokens:.0f}",
            f"{s.forward_tokens:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy_latency(summaries: Sequence[EvalSummary], path: str | Path) -> Path:
    """pass@1 against mean latency, one point per method with its confidence interval as the
    error bar, saved as a PNG (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    first = summaries[0]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for s in summaries:
            low, high = s.pass_at_1 - s.ci_low, s.ci_high - s.pass_at_1
            label = method_label(s.method, _config(s))
            ax.errorbar(
                [s.latency_s], [s.pass_at_1], yerr=[[low], [high]], fmt="o", capsize=4, label=label
            )
        latencies = [s.latency_s for s in summaries if s.latency_s > 0]
        if latencies and max(latencies) / min(latencies) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("mean latency per generation (s)")
        ax.set_ylabel("pass@1")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{first.task}: {first.problems} problems, {first.model}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.text(0.01, 0.01, f"error bars: {CI_METHOD}", fontsize=7, alpha=0.7)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
