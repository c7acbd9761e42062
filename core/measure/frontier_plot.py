"""The frontier as a PNG: max TV to π against each cost, one line per method (matplotlib, the
``[eval]`` extra; its Agg backend, so no display is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .frontier_report import GOAL, Row

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
    Each method's points are joined in order of cost; labels name every point's budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharey=True)
    panels = [("steps", "sequential model steps per output token (latency)")]
    panels.append(("forward", "forward tokens per output token (compute)"))
    for ax, (cost, xlabel) in zip(axes, panels, strict=True):
        for family in dict.fromkeys(r.family for r in all_rows):
            mine = sorted(
                (r for r in all_rows if r.family == family), key=lambda r: getattr(r, cost)
            )
            color, marker = STYLES.get(family, ("black", "."))
            xs = [getattr(r, cost) for r in mine]
            ys = [max(r.max_tv, 1e-3) for r in mine]
            ax.plot(xs, ys, marker=marker, color=color, label=family, linewidth=1.2, markersize=6)
            for r, x, y in zip(mine, xs, ys, strict=True):
                if r.budget:
                    ax.annotate(
                        r.budget.replace(" ", "\n") if family.startswith("power") else r.budget,
                        (x, y),
                        textcoords="offset points",
                        xytext=(3, 3),
                        fontsize=5.5,
                        color=color,
                    )
        ax.axhline(GOAL, color="black", linestyle="--", linewidth=0.8)
        ax.text(ax.get_xlim()[0], GOAL * 1.05, f" TV {GOAL}", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
    axes[0].set_ylabel("max TV to π over the table shapes (lower is better)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
