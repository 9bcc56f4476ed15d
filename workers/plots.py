"""Drawing helpers for the pipelines' plots: the pieces every diagram of an exported table shares.

A pipeline declares its plots on its spec (``PipelineSpec.plots``): functions of
``(table, show_bad)`` that return a matplotlib figure, built from these helpers. They work on
a table in the exported layout (from the store or from an exported file), so the column
names are the exported ones. Rows with ``flag_bad`` are left out unless asked for.
matplotlib loads only when a figure is drawn, with the Agg backend: no display is needed.
"""
from __future__ import annotations

import numpy as np

DPI = 120


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def floats(table, name: str) -> np.ndarray:
    """A column as floats, masked or missing values as NaN."""
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    values = np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)
    return np.asarray(values, dtype=float)


def shown(table, show_bad: bool) -> np.ndarray:
    """Which rows are drawn: all, or those without ``flag_bad``."""
    if show_bad or "flag_bad" not in table.colnames:
        return np.ones(len(table), dtype=bool)
    return ~np.asarray(np.ma.filled(np.ma.asarray(table["flag_bad"]), True), dtype=bool)


def is_demo(table) -> bool:
    """Whether any row was made with demo weights."""
    if table.meta.get("DEMO"):
        return True
    return "demo_weights" in table.colnames and bool(np.any(np.asarray(table["demo_weights"], dtype=bool)))


def title(ax, text: str, table, n_shown: int, hidden: int) -> None:
    """The plot's title, how many rows it shows and hides, and the demo warning."""
    note = f"{n_shown} shown" + (f", {hidden} flag_bad hidden" if hidden else "")
    demo = "  [DEMO WEIGHTS: not science]" if is_demo(table) else ""
    ax.set_title(f"{text}\n{note}{demo}", fontsize=10)


def empty(ax, what: str) -> None:
    """Say on the axes that there is nothing to draw."""
    ax.text(0.5, 0.5, f"no {what} to show", ha="center", va="center", transform=ax.transAxes, color="0.4")


def limits(values: np.ndarray, min_span: float) -> tuple[float, float]:
    """Axis limits around ``values``, at least ``min_span`` wide.

    A near-constant column (demo weights, one star) would otherwise fill the axis with
    differences far below any uncertainty.
    """
    low, high = float(np.min(values)), float(np.max(values))
    if high - low >= min_span:
        pad = 0.04 * (high - low)
        return low - pad, high + pad
    centre = 0.5 * (low + high)
    return centre - 0.5 * min_span, centre + 0.5 * min_span


def histogram(ax, values: np.ndarray, label: str, min_span: float, log_bins: bool = False) -> None:
    """A histogram of the finite values (positive ones on log bins when they span a decade)."""
    finite = values[np.isfinite(values)]
    if log_bins:
        finite = finite[finite > 0]
    if not finite.size:
        empty(ax, label)
        return
    if log_bins and finite.max() > 10 * finite.min():
        bins = np.geomspace(finite.min(), finite.max(), min(50, max(5, finite.size // 2)) + 1)
        ax.set_xscale("log")
    else:
        low, high = limits(finite, min_span)
        count = int(np.clip(np.ceil(np.sqrt(finite.size)) * 2, 10, 60))
        bins = np.linspace(low, high, count + 1)
    ax.hist(finite, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of spectra
    ax.set_ylabel("spectra")


def column_histogram(table, show_bad: bool, column: str, what: str, xlabel: str, text: str, min_span: float,
                     log_bins: bool = False):
    """A figure: the histogram of one column's finite values, flag_bad rows hidden unless asked."""
    plt = pyplot()
    drawn = shown(table, show_bad)
    values = floats(table, column)[drawn]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    histogram(ax, values, what, min_span=min_span, log_bins=log_bins)
    ax.set_xlabel(xlabel)
    counted = np.isfinite(values) & (values > 0) if log_bins else np.isfinite(values)
    title(ax, text, table, int(counted.sum()), int((~drawn).sum()))
    return fig


def save(fig, out) -> None:
    """Write ``fig`` as a PNG file (its folder made) and free it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    pyplot().close(fig)
