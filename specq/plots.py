"""``specq results plot``: the diagrams astronomers look at first, as PNG files.

BossNet: the Kiel diagram (Teff against log g, coloured by [Fe/H], both axes inverted as
astronomers draw it: hot stars left, dwarfs at the bottom), and histograms of [Fe/H] and
of the radial velocity. AstroNN distances: the distance histogram, and the predicted
luminosity ``L_fakemag`` against distance.

Works on a table in the exported layout (from the store or from an exported file), so the
column names are the exported ones (``nn_dist``, ``L_fakemag_err``). Rows with
``flag_bad`` are left out unless asked for. matplotlib runs with the Agg backend: no
display is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

_DPI = 120
KIEL_MIN_SPAN = (500.0, 0.5)  # K, dex: the narrowest Kiel diagram drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floats(table, name: str) -> np.ndarray:
    """A column as floats, masked or missing values as NaN."""
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    column = table[name]
    values = np.ma.filled(np.ma.asarray(column, dtype=float), np.nan)
    return np.asarray(values, dtype=float)


def _shown(table, show_bad: bool) -> np.ndarray:
    """Which rows are drawn: all, or those without ``flag_bad``."""
    if show_bad or "flag_bad" not in table.colnames:
        return np.ones(len(table), dtype=bool)
    return ~np.asarray(np.ma.filled(np.ma.asarray(table["flag_bad"]), True), dtype=bool)


def _is_demo(table) -> bool:
    if table.meta.get("DEMO"):
        return True
    return "demo_weights" in table.colnames and bool(np.any(np.asarray(table["demo_weights"], dtype=bool)))


def _title(ax, text: str, table, n_shown: int, hidden: int) -> None:
    note = f"{n_shown} shown" + (f", {hidden} flag_bad hidden" if hidden else "")
    demo = "  [DEMO WEIGHTS: not science]" if _is_demo(table) else ""
    ax.set_title(f"{text}\n{note}{demo}", fontsize=10)


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} to show", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _limits(values: np.ndarray, min_span: float) -> tuple[float, float]:
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


def _histogram(ax, values: np.ndarray, label: str, min_span: float, log_bins: bool = False) -> None:
    finite = values[np.isfinite(values)]
    if log_bins:
        finite = finite[finite > 0]
    if not finite.size:
        _empty(ax, label)
        return
    if log_bins and finite.max() > 10 * finite.min():
        bins = np.geomspace(finite.min(), finite.max(), min(50, max(5, finite.size // 2)) + 1)
        ax.set_xscale("log")
    else:
        low, high = _limits(finite, min_span)
        count = int(np.clip(np.ceil(np.sqrt(finite.size)) * 2, 10, 60))
        bins = np.linspace(low, high, count + 1)
    ax.hist(finite, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of spectra
    ax.set_ylabel("spectra")


def kiel(table, show_bad: bool = False):
    """Teff against log g coloured by [Fe/H], both axes inverted."""
    plt = _pyplot()
    shown = _shown(table, show_bad)
    teff, logg, fe_h = (_floats(table, n)[shown] for n in ("teff", "logg", "fe_h"))
    ok = np.isfinite(teff) & np.isfinite(logg)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    if ok.any():
        colour = np.where(np.isfinite(fe_h[ok]), fe_h[ok], np.nan)
        known = colour[np.isfinite(colour)]
        vmin, vmax = _limits(known, 0.5) if known.size else (None, None)
        points = ax.scatter(teff[ok], logg[ok], c=colour, cmap="viridis", s=14, edgecolors="none",
                            plotnonfinite=True, vmin=vmin, vmax=vmax)
        fig.colorbar(points, ax=ax, label="[Fe/H] (dex)")
    else:
        _empty(ax, "Teff and log g")
    if ok.any():
        ax.set_xlim(*_limits(teff[ok], KIEL_MIN_SPAN[0]))
        ax.set_ylim(*_limits(logg[ok], KIEL_MIN_SPAN[1]))
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff (K)")
    ax.set_ylabel("log g (cgs)")
    _title(ax, "BossNet Kiel diagram", table, int(ok.sum()), int((~shown).sum()))
    return fig


def _column_histogram(table, show_bad: bool, column: str, what: str, xlabel: str, title: str, min_span: float):
    """A histogram of one column's finite values, flag_bad rows hidden unless asked."""
    plt = _pyplot()
    shown = _shown(table, show_bad)
    values = _floats(table, column)[shown]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _histogram(ax, values, what, min_span=min_span)
    ax.set_xlabel(xlabel)
    _title(ax, title, table, int(np.isfinite(values).sum()), int((~shown).sum()))
    return fig


def fe_h_histogram(table, show_bad: bool = False):
    return _column_histogram(table, show_bad, "fe_h", "[Fe/H]", "[Fe/H] (dex)", "BossNet metallicity", 0.5)


def v_r_histogram(table, show_bad: bool = False):
    return _column_histogram(table, show_bad, "bn_v_r", "v_r", "v_r (km/s)", "BossNet radial velocity", 20.0)


def distance_histogram(table, show_bad: bool = False):
    plt = _pyplot()
    shown = _shown(table, show_bad)
    values = _floats(table, "nn_dist")[shown]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _histogram(ax, values, "distances", min_span=200.0, log_bins=True)
    ax.set_xlabel("distance (pc)")
    _title(ax, "AstroNN distances", table, int((np.isfinite(values) & (values > 0)).sum()), int((~shown).sum()))
    return fig


def fakemag_distance(table, show_bad: bool = False):
    """L_fakemag (with its error) against distance, log-log."""
    plt = _pyplot()
    shown = _shown(table, show_bad)
    dist, fakemag, error = (_floats(table, n)[shown] for n in ("nn_dist", "L_fakemag", "L_fakemag_err"))
    ok = np.isfinite(dist) & np.isfinite(fakemag) & (dist > 0) & (fakemag > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    if ok.any():
        yerr = np.where(np.isfinite(error[ok]), error[ok], 0.0)
        # Error bars below zero cannot be drawn on a log axis: clip the lower bar.
        lower = np.minimum(yerr, fakemag[ok] * 0.999)
        ax.errorbar(dist[ok], fakemag[ok], yerr=[lower, yerr], fmt="o", ms=4, color="C0", ecolor="0.6",
                    elinewidth=0.8, capsize=0)
        # Log axes only where the values span a decade; plain numbers on the ticks either way.
        from matplotlib.ticker import ScalarFormatter

        for values, axis, scale in ((dist[ok], ax.xaxis, ax.set_xscale), (fakemag[ok], ax.yaxis, ax.set_yscale)):
            if values.max() > 10 * values.min():
                scale("log")
                axis.set_major_formatter(ScalarFormatter())
        if dist[ok].max() <= 10 * dist[ok].min():
            ax.set_xlim(*_limits(dist[ok], 200.0))
    else:
        _empty(ax, "distances")
    ax.set_xlabel("distance (pc)")
    ax.set_ylabel("L_fakemag = 10^(0.2 M_Ks + 2)")
    _title(ax, "AstroNN: predicted Ks luminosity against distance", table, int(ok.sum()), int((~shown).sum()))
    return fig


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=_DPI)
    _pyplot().close(fig)
    return out


PLOTS: dict[str, tuple[tuple[str, Callable], ...]] = {
    "bossnet": (("kiel", kiel), ("fe_h", fe_h_histogram), ("v_r", v_r_histogram)),
    "astronn_dist": (("distance", distance_histogram), ("fakemag-distance", fakemag_distance)),
}
"""Each pipeline's plots: (file name part, function of (table, show_bad) returning a figure)."""


def plot_table(table, pipeline: str, out_dir: Path, show_bad: bool = False) -> list[Path]:
    """Write ``pipeline``'s PNG files for ``table`` (exported layout) into ``out_dir``.

    Returns
    -------
    list of Path
        ``{out_dir}/{pipeline}-{plot}.png``, one per plot of :data:`PLOTS`.
    """
    if pipeline not in PLOTS:
        raise ValueError(f"no plots for pipeline {pipeline!r}; known: {', '.join(PLOTS)}")
    return [_save(draw(table, show_bad), Path(out_dir) / f"{pipeline}-{name}.png") for name, draw in PLOTS[pipeline]]
