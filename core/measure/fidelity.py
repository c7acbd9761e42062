"""Fidelity at small budgets: total variation to the exact power distribution against cost.

``python -m power_sampling.measure.fidelity [--quick] [--rules] [--out DIR]`` runs the power sampler
on small random table models of several shapes (flat and peaked next-token distributions, early and
late endings), compares the distribution of its completions with the exact π ∝ p^α
(:mod:`power_sampling.exact`), and records the mean forward tokens per generation. Block level
(Algorithm 2) over K, L, M and B; token level (Algorithm 1) over K and M; both over α. Seeds are
fixed, so a run repeats exactly. ``--rules`` compares the candidate selection rules of
:mod:`power_sampling.measure.selection_rules`.

The sampled distribution is estimated with a Rao-Blackwellised count: every step adds the
probability it gave each candidate that finishes the completion there (ended, or filled the
length cap), instead of the one completion drawn. Its mean is the sampler's distribution and its
noise is much lower; the noise of the TV is reported next to it (``noise``: the expected TV of
the estimate from the exact distribution it estimates, from the per-completion standard errors).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import exact
from ..backends.table import TableLM
from ..config import PowerSamplingConfig
from ..progress import progress_bar, progress_wanted
from ..samplers import ScalablePowerSampler, SequenceState
from .selection_rules import RULES

PROMPT = (1,)
EOS = 0
VOCAB = 5
LENGTH = 4


def table(seed: int, concentration: float, eos: float | None = None) -> TableLM:
    """A random table model over 5 tokens (0 = EOS), next-token distributions drawn from a
    Dirichlet per context (the last two tokens); ``eos`` fixes the end probability."""
    rng = np.random.default_rng(seed)
    rows: dict[tuple[int, ...], list[float]] = {}

    def probs(prefix: tuple[int, ...]) -> list[float]:
        key = prefix[-2:]
        if key not in rows:
            if eos is None:
                rows[key] = rng.dirichlet(np.full(VOCAB, concentration)).tolist()
            else:
                rest = rng.dirichlet(np.full(VOCAB - 1, concentration)) * (1 - eos)
                rows[key] = [eos, *rest.tolist()]
        return rows[key]

    return TableLM(probs, EOS, vocab_size=VOCAB)


SHAPES: dict[str, Callable[[], TableLM]] = {
    "flat": lambda: table(11, 2.0),
    "peaked": lambda: table(12, 0.3),
    "early-end": lambda: table(13, 0.5, eos=0.35),
    "late-end": lambda: table(14, 0.5, eos=0.03),
}
"""The table shapes of the study (each a fixed seed)."""


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


Kernel = dict[tuple[int, ...], float]
"""One step's distribution over the blocks it commits."""


def step_kernels(
    sampler: ScalablePowerSampler, prefix: tuple[int, ...], runs: int, seed: int
) -> tuple[list[Kernel], float, float]:
    """``runs`` independent steps from ``prefix``: each step's ``probs`` over its candidates
    (the step draws its block from them), the mean forward tokens and mean kept mass."""
    rng = np.random.default_rng([seed, *prefix])
    stop = sampler.backend.stop
    kernels, forward, kept = [], 0.0, 0.0
    for _ in range(runs):
        state = SequenceState(PROMPT + prefix, LENGTH - len(prefix), trace=[])
        sampler.step([state], stop, rng)
        assert state.trace
        trace = state.trace[0]
        kernel: Kernel = defaultdict(float)
        for block, prob in zip(trace.candidates, trace.p_jk, strict=True):
            kernel[block] += prob
        kernels.append(kernel)
        forward += state.stats.forward_tokens
        kept += trace.kept_mass
    return kernels, forward / runs, kept / runs


@dataclass
class Estimate:
    """The sampler's completion distribution, composed from per-prefix step kernels."""

    distribution: dict[tuple[int, ...], float]
    noise: float
    forward_tokens: float
    kept_mass: float
    unexplored: float


def sampled_distribution(
    sampler: ScalablePowerSampler,
    runs: int,
    *,
    seed: int = 0,
    min_reach: float = 1e-3,
    min_steps: int = 20,
) -> Estimate:
    """The distribution of the sampler's completions of :data:`PROMPT`, Rao-Blackwellised.

    The sampler is Markov in the prefix (no rollout reuse), so its distribution is the product of
    one-step kernels Q(block | prefix). Each Q is the mean of the ``probs`` that independent steps
    from that prefix sample from. Prefixes are explored while their probability of being reached
    is at least ``min_reach`` (the rest is ``unexplored`` mass); a prefix reached with
    probability r gets max(``min_steps``, r · runs) steps. ``noise`` is half the TV between the two
    estimates from each half of the steps, about the TV of the whole estimate from its mean.
    """
    # Per explored prefix: its kernel from all steps, and from each half of them.
    explored: dict[tuple[int, ...], list[Kernel]] = {}
    forward = kept = unexplored = steps = 0.0
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        prefix, reach = stack.pop()
        if reach < min_reach:
            unexplored += reach
            continue
        count = max(min_steps, math.ceil(reach * runs))
        kernels, cost, share = step_kernels(sampler, prefix, count, seed)
        forward += reach * cost
        kept += reach * share
        steps += reach
        halves = [_mean(kernels[: count // 2]), _mean(kernels[count // 2 :])]
        explored[prefix] = [_mean(kernels), *halves]
        for block, q in explored[prefix][0].items():
            if not _terminal(sampler, prefix + block):
                stack.append((prefix + block, reach * q))
    full, first, second = (_compose(explored, sampler, i) for i in range(3))
    noise = 0.5 * exact.total_variation(first, second)
    return Estimate(full, noise, forward, kept / steps, unexplored)


def _mean(kernels: Sequence[Kernel]) -> Kernel:
    out: Kernel = defaultdict(float)
    for kernel in kernels:
        for block, q in kernel.items():
            out[block] += q / len(kernels)
    return out


def _terminal(sampler: ScalablePowerSampler, tokens: tuple[int, ...]) -> bool:
    return tokens[-1] in sampler.backend.stop.token_ids or len(tokens) >= LENGTH


def _compose(
    explored: dict[tuple[int, ...], list[Kernel]], sampler: ScalablePowerSampler, which: int
) -> dict[tuple[int, ...], float]:
    out: dict[tuple[int, ...], float] = defaultdict(float)
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        prefix, reach = stack.pop()
        if prefix not in explored:
            continue
        for block, q in explored[prefix][which].items():
            if _terminal(sampler, prefix + block):
                out[prefix + block] += reach * q
            else:
                stack.append((prefix + block, reach * q))
    return dict(out)


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
    parser.add_argument("--out", type=Path, default=None, help="write fidelity.md/json here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 2:
        parser.error(f"--runs={args.runs} is invalid: use at least 2 draws")
    start = time.perf_counter()
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


if __name__ == "__main__":
    raise SystemExit(main())
