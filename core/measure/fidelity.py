"""Fidelity at small budgets: total variation to the exact power distribution against cost.

``python -m power_sampling.measure.fidelity [--quick] [--rules | --frontier] [--out DIR]`` runs the
power sampler on small random table models of several shapes (flat and peaked next-token
distributions, early and late endings), compares the distribution of its completions with the exact
π ∝ p^α (:mod:`power_sampling.exact`), and records the mean forward tokens per generation. Block
level (Algorithm 2) over K, L, M and B; token level (Algorithm 1) over K and M; both over α. Seeds
are fixed, so a run repeats exactly. ``--rules`` compares the candidate selection rules of
:mod:`power_sampling.measure.selection_rules`; ``--frontier`` runs every method at several budgets
(:mod:`.frontier`).

The sampled distribution is estimated with a Rao-Blackwellised count
(:func:`.tables.sampled_distribution`): every step adds the
probability it gave each candidate that finishes the completion there (ended, or filled the
length cap), instead of the one completion drawn. Its mean is the sampler's distribution and its
noise is much lower; the noise of the TV is reported next to it (``noise``: the expected TV of
the estimate from the exact distribution it estimates, from the per-completion standard errors).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import exact
from ..config import PowerSamplingConfig
from ..progress import progress_bar, progress_wanted
from . import frontier, frontier_plot, frontier_report
from .selection_rules import RULES
from .tables import LENGTH, PROMPT, SHAPES, VOCAB, sampled_distribution


@dataclass(frozen=True)
class Setting:
    """One point of the grid: α, B (1 = token level), K, L (block level only) and M."""

    alpha: float
    block_size: int
    top_k: int
    num_rollouts: int
    num_candidates: int = 1

    @property
    def real_cost(self) -> int:
        """Tokens drawn per decided token with blocks and rollouts of equal length H = B (a real
        model, where drawn blocks are distinct): L + K·M per token at block level, 1 + K·M·H at
        token level (here with H = 16, as the cpu preset)."""
        if self.block_size == 1:
            return 1 + 16 * self.top_k * self.num_rollouts
        if self.block_size >= LENGTH:
            return self.num_candidates
        return self.num_candidates + self.top_k * self.num_rollouts

    @property
    def label(self) -> str:
        if self.block_size == 1:
            return f"token K={self.top_k} M={self.num_rollouts}"
        return (
            f"block B={self.block_size} K={self.top_k} L={self.num_candidates} "
            f"M={self.num_rollouts}"
        )

    def config(self, length: int = LENGTH, **extra: Any) -> PowerSamplingConfig:
        """The sampler settings, rollouts reaching the end of the completion."""
        return PowerSamplingConfig(
            alpha=self.alpha,
            block_size=self.block_size,
            top_k=self.top_k,
            num_rollouts=self.num_rollouts,
            num_candidates=max(self.num_candidates, self.top_k),
            rollout_length=length,
            max_new_tokens=length,
            **extra,
        )


@dataclass(frozen=True)
class Result:
    """The measured fidelity and cost of one setting on one table shape."""

    shape: str
    setting: str
    alpha: float
    block_size: int
    top_k: int
    num_candidates: int
    num_rollouts: int
    tv: float
    """Total variation between the sampler's completions and the exact π."""
    noise: float
    """Expected TV of the estimate from the sampler's true distribution (its noise floor)."""
    forward_tokens: float
    """Mean forward tokens per generation (candidates, rollouts, top-K calls)."""
    real_cost: int
    """:attr:`Setting.real_cost`."""
    kept_mass: float
    """Mean ``StepTrace.kept_mass`` per step, steps weighted by how often they are reached."""
    unexplored: float
    """Probability of prefixes too rare to explore (their completions count as missing)."""
    runs: int


def measure(shape: str, setting: Setting, runs: int, rule: str = "top-K") -> Result:
    """TV to π and cost of ``setting`` on the table shape ``shape``, with the selection
    ``rule`` (one of :data:`power_sampling.measure.selection_rules.RULES`)."""
    lm = SHAPES[shape]()
    pi = exact.power_distribution(lm, PROMPT, setting.alpha, LENGTH)
    est = sampled_distribution(RULES[rule](lm, setting.config()), runs)
    return Result(
        shape,
        setting.label if rule == "top-K" else f"{setting.label}, {rule}",
        setting.alpha,
        setting.block_size,
        setting.top_k,
        setting.num_candidates if setting.block_size > 1 else 0,
        setting.num_rollouts,
        round(exact.total_variation(est.distribution, pi), 4),
        round(est.noise, 4),
        round(est.forward_tokens, 1),
        setting.real_cost,
        round(est.kept_mass, 3),
        round(est.unexplored, 4),
        runs,
    )


def grid(quick: bool) -> list[Setting]:
    """The settings studied: the presets' ratios and their neighbours, several at the cpu
    preset's cost per token on a real model (L + K·M = 24 at B = H)."""
    blocks = [(4, 8, 4), (8, 16, 2), (8, 32, 8)]  # (K, L, M): old cpu, cpu, paper presets
    tokens = [(5, 2)]  # (K, M)
    wholes: list[tuple[int, int]] = []  # (K, L) at B = the whole completion
    if not quick:
        blocks += [(2, 4, 2), (4, 8, 2), (8, 8, 2), (4, 4, 5), (6, 6, 3), (4, 12, 3), (4, 16, 2)]
        blocks += [(2, 16, 4), (8, 16, 4), (16, 16, 2)]
        tokens += [(2, 2), (4, 2), (5, 4)]
        wholes += [(4, 8), (8, 32)]
    out = [Setting(4.0, 2, k, m, n) for k, n, m in blocks]
    out += [Setting(4.0, 1, k, m) for k, m in tokens]
    out += [Setting(4.0, LENGTH, k, 1, n) for k, n in wholes]
    if not quick:
        out += [Setting(2.0, 2, k, m, n) for k, n, m in ((4, 8, 4), (8, 16, 2), (8, 32, 8))]
        out += [Setting(2.0, 1, 5, 2)]
    return out


def run(quick: bool = False, runs: int | None = None, progress: bool = False) -> list[Result]:
    """Every setting of the grid on every shape (``progress``: a tqdm bar on stderr)."""
    runs = runs or (100 if quick else 300)
    return measure_all(
        [(shape, s, "top-K") for s in grid(quick) for shape in SHAPES], runs, progress
    )


def compare_rules(runs: int | None = None, progress: bool = False) -> list[Result]:
    """Every selection rule at two block settings of equal real-model cost to the cpu presets
    (old and current), on every shape."""
    settings = [Setting(4.0, 2, 8, 2, 8), Setting(4.0, 2, 8, 2, 16)]
    units = [(shape, s, rule) for s in settings for rule in RULES for shape in SHAPES]
    return measure_all(units, runs or 200, progress)


def measure_all(
    units: Sequence[tuple[str, Setting, str]], runs: int, progress: bool = False
) -> list[Result]:
    """:func:`measure` of each (shape, setting, rule), with a tqdm bar on stderr naming the
    setting and shape being measured when ``progress``."""
    results = []
    with progress_bar(len(units), desc="fidelity", unit="setting", progress=progress) as bar:
        for shape, setting, rule in units:
            bar.set_postfix_str(f"{setting.label}, {rule} on {shape}", refresh=False)
            results.append(measure(shape, setting, runs, rule))
            bar.update(1)
    return results


def markdown(results: Sequence[Result]) -> str:
    """One row per setting: TV on each shape (noise in brackets) and the mean cost."""
    shapes = list(dict.fromkeys(r.shape for r in results))
    rows: dict[tuple[float, str], dict[str, Result]] = defaultdict(dict)
    # By α (high first), token level last, then by the cost on a real model.
    order = sorted(
        results,
        key=lambda r: (-r.alpha, r.block_size == 1, r.block_size, r.real_cost, r.num_candidates),
    )
    for r in order:
        rows[(r.alpha, r.setting)][r.shape] = r
    head = "| α | setting | " + " | ".join(f"TV {s}" for s in shapes)
    head += " | max TV | forward tokens | per token at B = H = 16 | kept mass |"
    lines = [head, "|" + "---|" * (len(shapes) + 6)]
    for (alpha, label), by_shape in rows.items():
        cells = [f"{by_shape[s].tv:.3f} (±{by_shape[s].noise:.3f})" for s in shapes]
        worst = max(by_shape[s].tv for s in shapes)
        cost = np.mean([by_shape[s].forward_tokens for s in shapes])
        kept = min(by_shape[s].kept_mass for s in shapes)
        real = by_shape[shapes[0]].real_cost
        lines.append(
            f"| {alpha:g} | {label} | " + " | ".join(cells) + f" | {worst:.3f} | {cost:.0f} | "
            f"{real} | {kept:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m power_sampling.measure.fidelity",
        description="TV to the exact power distribution against cost, on table models.",
    )
    parser.add_argument("--quick", action="store_true", help="a small grid, 200 draws each")
    parser.add_argument("--runs", type=int, default=None, help="draws per setting and shape")
    parser.add_argument(
        "--rules", action="store_true", help="compare the selection rules instead of the grid"
    )
    parser.add_argument(
        "--frontier",
        action="store_true",
        help="every method at several budgets: TV against forward tokens and sequential steps "
        "per output token (writes frontier.md/json/png)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write fidelity.md/json here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 2:
        parser.error(f"--runs={args.runs} is invalid: use at least 2 draws")
    if args.frontier and args.rules:
        parser.error("--frontier and --rules are separate studies: pass one")
    start = time.perf_counter()
    if args.frontier:
        words = sys.argv[1:] if argv is None else list(argv)
        command = " ".join(["python -m power_sampling.measure.fidelity", *words])
        return _frontier(args.quick, args.runs, args.out, command, start)
    progress = progress_wanted(args.quiet)
    if args.rules:
        results = compare_rules(args.runs, progress)
    else:
        results = run(args.quick, args.runs, progress)
    table_md = markdown(results)
    print(table_md)
    print(f"\n{len(results)} measurements in {time.perf_counter() - start:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "fidelity-rules" if args.rules else "fidelity"
        (args.out / f"{name}.md").write_text(table_md + "\n")
        payload = {"length": LENGTH, "vocab": VOCAB, "results": [asdict(r) for r in results]}
        (args.out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


def _frontier(quick: bool, runs: int | None, out: Path | None, command: str, start: float) -> int:
    """The frontier study (:mod:`.frontier`): its table, JSON rows and plot under ``out``."""
    results = frontier.run(frontier.grid(quick), runs or (100 if quick else 400))
    seconds = time.perf_counter() - start
    date = datetime.date.today().isoformat()
    plotted = out is not None and frontier_plot.available()
    table_md = frontier_report.markdown(
        results, command, date, seconds, "frontier.png" if plotted else None
    )
    print(table_md)
    print(f"\n{len(results)} measurements in {seconds:.0f} s")
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(table_md)
    payload = {
        "command": command,
        "date": date,
        "alpha": frontier.ALPHA,
        "length": LENGTH,
        "vocab": VOCAB,
        "results": [asdict(r) for r in results],
    }
    (out / "frontier.json").write_text(json.dumps(payload, indent=1) + "\n")
    if plotted:
        title = f"TV to the exact π against cost on the table models (α = 4): {command}, {date}"
        frontier_plot.plot(frontier_report.rows(results), out / "frontier.png", title)
    else:
        print("matplotlib is not installed: no plot (pip install 'power-sampling[eval]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
