"""The frontier as a PNG: max TV to π against each cost, one line per method (matplotlib, the
``[eval]`` extra; its Agg backend, so no display is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .frontier_report import GOAL, Row

X_TICKS = [1, 1.5, 2, 3, 4, 5, 7, 10, 20, 30, 50, 70, 100]
Y_TICKS = [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]

STYLES = {
    "power block": ("tab:blue", "o"),
    "power block + reuse": ("tab:cyan", "s"),
    "power token": ("tab:purple", "v"),
    "mcmc": ("tab:red", "^"),
    "smc": ("tab:green", "D"),
    "smc + look-ahead": ("tab:olive", "P"),
    "best-of-N": ("tab:orange", "X"),
    "low temperature": ("tab:brown", "*"),
    "standard": ("tab:gray", "*"),
}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(all_rows: Sequence[Row], path: Path, title: str) -> None:
    """Two panels: max TV against sequential steps and against forward tokens per output token.
    Every point is a faint marker; each method's line joins its own frontier (the points no
    cheaper point of the method beats), labelled with their budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
    panels = [("steps", "sequential model steps per output token (latency)")]
    panels.append(("forward", "forward tokens per output token (compute)"))
    for ax, (cost, xlabel) in zip(axes, panels, strict=True):
        for family in dict.fromkeys(r.family for r in all_rows):
            mine = sorted(
                (r for r in all_rows if r.family == family),
                key=lambda r: (getattr(r, cost), r.max_tv),
            )
            color, marker = STYLES.get(family, ("black", "."))
            ax.scatter(
                [getattr(r, cost) for r in mine],
                [max(r.max_tv, 1e-3) for r in mine],
                marker=marker,
                color=color,
                s=28,
                alpha=0.45,
            )
            front = _front(mine)
            xs = [getattr(r, cost) for r in front]
            ys = [max(r.max_tv, 1e-3) for r in front]
            ax.plot(xs, ys, marker=marker, color=color, label=family, linewidth=1.4)
            for r, x, y in zip(front, xs, ys, strict=True):
                if r.budget:
                    ax.annotate(
                        r.budget,
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, -3),
                        fontsize=6.5,
                        color=color,
                    )
        ax.axhline(GOAL, color="black", linestyle="--", linewidth=0.8)
        ax.text(0.01, GOAL * 1.04, f"TV {GOAL}", fontsize=8, transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis, ticks in ((ax.xaxis, X_TICKS), (ax.yaxis, Y_TICKS)):
            axis.set_major_locator(ticker.FixedLocator(ticks))
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
    axes[0].set_ylabel("max TV to π over the table shapes (lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _front(ordered: Sequence[Row]) -> list[Row]:
    """The points of ``ordered`` (by cost) with a lower max TV than every cheaper one."""
    out: list[Row] = []
    for row in ordered:
        if not out or row.max_tv < out[-1].max_tv:
            out.append(row)
    return out
