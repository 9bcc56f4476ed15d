"""AstroNN distances' plots: the distance histogram, and the predicted luminosity against distance.

The exported column names are used (``nn_dist``, ``L_fakemag_err``). Named by the spec's ``plots``.
"""
from __future__ import annotations

import numpy as np

from workers import plots as draw


def distance_histogram(table, show_bad: bool = False):
    return draw.column_histogram(table, show_bad, "nn_dist", "distances", "distance (pc)", "AstroNN distances",
                                 200.0, log_bins=True)


def fakemag_distance(table, show_bad: bool = False):
    """L_fakemag (with its error) against distance, log-log."""
    plt = draw.pyplot()
    shown = draw.shown(table, show_bad)
    dist, fakemag, error = (draw.floats(table, n)[shown] for n in ("nn_dist", "L_fakemag", "L_fakemag_err"))
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
            ax.set_xlim(*draw.limits(dist[ok], 200.0))
    else:
        draw.empty(ax, "distances")
    ax.set_xlabel("distance (pc)")
    ax.set_ylabel("L_fakemag = 10^(0.2 M_Ks + 2)")
    draw.title(ax, "AstroNN: predicted Ks luminosity against distance", table, int(ok.sum()), int((~shown).sum()))
    return fig


PLOTS = (("distance", distance_histogram), ("fakemag-distance", fakemag_distance))
