"""The frontier's table, headline and presets, as markdown (and the rows behind them).

Rows are one point each (a method at a budget), aggregated over the table shapes: the TV on each
shape with its noise, the worst (max) TV, and each cost per output token averaged over the
shapes. A row is on the latency frontier (``L``) when no other row has both a lower or equal max
TV and fewer or as many sequential steps per token, one of them strictly; on the compute
frontier (``C``) likewise with forward tokens per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .frontier import Measured

GOAL = 0.05
"""The max TV a budget should reach (the issue's goal for the ``cpu`` preset)."""

PRESET_POINTS: dict[str, list[tuple[str, str]]] = {
    "cpu": [("power block", "K=8 L=16 M=2"), ("mcmc", "steps=2"), ("best-of-N", "N=8")],
    "paper": [("power block", "K=8 L=32 M=8"), ("mcmc", "steps=10"), ("best-of-N", "N=32")],
    "paper-fast": [("power block + reuse", "K=8 L=8 M=8")],
    "smc defaults": [("smc", "N=64")],
}
"""Each preset's settings as the points of the grid that share its ratios (B = H on the
tables: blocks of 2, rollouts to the end)."""


@dataclass(frozen=True)
class Row:
    family: str
    budget: str
    by_shape: dict[str, Measured]
    max_tv: float
    noise: float
    """The largest noise over the shapes."""
    forward: float
    steps: float
    real_cost: int | None
    frontier: str = ""

    @property
    def label(self) -> str:
        return f"{self.family} {self.budget}".strip()


def rows(results: Sequence[Measured]) -> list[Row]:
    """One row per point, in the order measured, with its frontier marks."""
    grouped: dict[tuple[str, str], dict[str, Measured]] = {}
    for r in results:
        grouped.setdefault((r.family, r.budget), {})[r.shape] = r
    out = []
    for (family, budget), by_shape in grouped.items():
        ms = list(by_shape.values())
        out.append(
            Row(
                family,
                budget,
                by_shape,
                max(m.tv for m in ms),
                max(m.noise for m in ms),
                float(np.mean([m.forward_per_token for m in ms])),
                float(np.mean([m.steps_per_token for m in ms])),
                ms[0].real_cost,
            )
        )
    marked = []
    for row in out:
        marks = ""
        if _undominated(row, out, "steps"):
            marks += "L"
        if _undominated(row, out, "forward"):
            marks += "C"
        marked.append(Row(**{**row.__dict__, "frontier": marks}))
    return marked


def _undominated(row: Row, others: Sequence[Row], cost: str) -> bool:
    mine = getattr(row, cost)
    for other in others:
        theirs = getattr(other, cost)
        if (
            other.max_tv <= row.max_tv
            and theirs <= mine
            and (other.max_tv, theirs)
            != (
                row.max_tv,
                mine,
            )
        ):
            return False
    return True


def table(all_rows: Sequence[Row]) -> str:
    shapes = list(all_rows[0].by_shape)
    head = "| method | budget | " + " | ".join(f"TV {s}" for s in shapes)
    head += " | max TV | forward tokens / token | sequential steps / token | L + K·M | frontier |"
    lines = [head, "|" + "---|" * 2 + "---:|" * (len(shapes) + 4) + "---|"]
    for row in all_rows:
        cells = [f"{row.by_shape[s].tv:.3f} (±{row.by_shape[s].noise:.3f})" for s in shapes]
        real = "" if row.real_cost is None else str(row.real_cost)
        lines.append(
            f"| {row.family} | {row.budget} | " + " | ".join(cells) + f" | {row.max_tv:.3f} | "
            f"{row.forward:.1f} | {row.steps:.2f} | {real} | {row.frontier} |"
        )
    return "\n".join(lines)


def _describe(row: Row) -> str:
    return (
        f"{row.label} (max TV {row.max_tv:.3f}, {row.steps:.2f} sequential steps and "
        f"{row.forward:.1f} forward tokens per output token)"
    )


def headline(all_rows: Sequence[Row]) -> list[str]:
    """Lowest latency and least compute reaching :data:`GOAL`, and the highest fidelity."""
    good = [r for r in all_rows if r.max_tv <= GOAL]
    lines = []
    if good:
        fast = min(good, key=lambda r: (r.steps, r.max_tv))
        cheap = min(good, key=lambda r: (r.forward, r.max_tv))
        lines.append(f"- **Lowest latency at max TV ≤ {GOAL}**: {_describe(fast)}.")
        lines.append(f"- **Least compute at max TV ≤ {GOAL}**: {_describe(cheap)}.")
    else:
        lines.append(f"- No point reaches max TV ≤ {GOAL}.")
    best = min(all_rows, key=lambda r: (r.max_tv, r.forward))
    lines.append(f"- **Highest fidelity**: {_describe(best)}.")
    close = [
        r.label
        for r in all_rows
        if r is not best and r.max_tv - r.noise <= best.max_tv + best.noise
    ]
    if close:
        lines.append(f"  Within the noise of it: {', '.join(close)}.")
    lines.append("- Best point of each method (lowest max TV; ties: fewer forward tokens):")
    for family in dict.fromkeys(r.family for r in all_rows):
        mine = [r for r in all_rows if r.family == family]
        top = min(mine, key=lambda r: (r.max_tv, r.forward))
        lines.append(f"  - {_describe(top)}")
    return lines


def presets(all_rows: Sequence[Row]) -> list[str]:
    """Each preset's measured points, and the cheapest block budget reaching :data:`GOAL`."""
    index = {(r.family, r.budget): r for r in all_rows}
    lines = [
        "| preset | method on the tables | max TV | forward tokens / token | "
        "sequential steps / token | L + K·M at B = H = 16 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, points in PRESET_POINTS.items():
        for key in points:
            if key in index:
                r = index[key]
                real = "" if r.real_cost is None else str(r.real_cost)
                lines.append(
                    f"| {name} | {r.label} | {r.max_tv:.3f} | {r.forward:.1f} | "
                    f"{r.steps:.2f} | {real} |"
                )
    blocks = [r for r in all_rows if r.family == "power block" and r.real_cost is not None]
    reached = sorted((r for r in blocks if r.max_tv <= GOAL), key=lambda r: (r.real_cost, r.max_tv))
    cpu = index.get(("power block", "K=8 L=16 M=2"))
    lines.append("")
    if cpu is not None:
        verdict = "reaches" if cpu.max_tv <= GOAL else "does not reach"
        lines.append(
            f"The `cpu` preset's block setting (K=8 L=16 M=2, {cpu.real_cost} tokens per token "
            f"at B = H = 16) {verdict} max TV ≤ {GOAL}: {cpu.max_tv:.3f}."
        )
    if reached:
        r = reached[0]
        lines.append(
            f"The cheapest block setting of the grid that reaches it: {r.budget} "
            f"(max TV {r.max_tv:.3f}, {r.real_cost} tokens per token at B = H = 16, "
            f"{r.forward:.1f} forward tokens per output token on the tables)."
        )
    elif blocks:
        lines.append(f"No block setting of the grid reaches max TV ≤ {GOAL}.")
    return lines


def markdown(
    results: Sequence[Measured], command: str, date: str, seconds: float, plot: str | None
) -> str:
    """The whole report; ``plot``: the PNG's file name beside it, shown under the table."""
    all_rows = rows(results)
    parts = [
        "# Fidelity frontier: every method's TV to π against its cost",
        "",
        f"Made by `{command}` on {date} ({seconds:.0f} s of wall time, one process). Tables: "
        f"{', '.join(all_rows[0].by_shape)} (`power_sampling.measure.fidelity.SHAPES`), "
        "α = 4, 4 new tokens after a one-token prompt; blocks, MCMC blocks and SMC intervals of "
        "2 tokens, SMC's α ramp over 2 tokens, rollouts to the end. Costs are per output token "
        "and averaged over the shapes; sequential steps are `GenerationStats.sequential_steps` "
        "(what a GPU waits for). The number in brackets is each TV's noise (0 for exact laws); "
        "rows within their noise of each other are not distinguished by this run. "
        "`frontier`: L = no other row has both lower max TV and fewer sequential steps, "
        "C = likewise with forward tokens. `L + K·M`: power sampling's tokens per token on a "
        "real model with B = H = 16.",
        "",
        table(all_rows),
        "",
        *(
            [f"![TV to π against sequential steps and forward tokens per token]({plot})", ""]
            if plot
            else []
        ),
        "## Headline",
        "",
        *headline(all_rows),
        "",
        "## Presets at their measured points",
        "",
        *presets(all_rows),
        "",
    ]
    return "\n".join(parts)
