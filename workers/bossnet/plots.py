"""BossNet's plots: the Kiel diagram, and histograms of [Fe/H] and of the radial velocity.

The Kiel diagram plots Teff against log g, coloured by [Fe/H], both axes inverted as
astronomers draw it: hot stars left, dwarfs at the bottom. Named by the spec's ``plots``.
"""
from __future__ import annotations

import numpy as np

from workers import plots as draw

KIEL_MIN_SPAN = (500.0, 0.5)  # K, dex: the narrowest Kiel diagram drawn


def kiel(table, show_bad: bool = False):
    """Teff against log g coloured by [Fe/H], both axes inverted."""
    plt = draw.pyplot()
    shown = draw.shown(table, show_bad)
    teff, logg, fe_h = (draw.floats(table, n)[shown] for n in ("teff", "logg", "fe_h"))
    ok = np.isfinite(teff) & np.isfinite(logg)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    if ok.any():
        colour = np.where(np.isfinite(fe_h[ok]), fe_h[ok], np.nan)
        known = colour[np.isfinite(colour)]
        vmin, vmax = draw.limits(known, 0.5) if known.size else (None, None)
        points = ax.scatter(teff[ok], logg[ok], c=colour, cmap="viridis", s=14, edgecolors="none",
                            plotnonfinite=True, vmin=vmin, vmax=vmax)
        fig.colorbar(points, ax=ax, label="[Fe/H] (dex)")
        ax.set_xlim(*draw.limits(teff[ok], KIEL_MIN_SPAN[0]))
        ax.set_ylim(*draw.limits(logg[ok], KIEL_MIN_SPAN[1]))
    else:
        draw.empty(ax, "Teff and log g")
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("Teff (K)")
    ax.set_ylabel("log g (cgs)")
    draw.title(ax, "BossNet Kiel diagram", table, int(ok.sum()), int((~shown).sum()))
    return fig


def fe_h_histogram(table, show_bad: bool = False):
    return draw.column_histogram(table, show_bad, "fe_h", "[Fe/H]", "[Fe/H] (dex)", "BossNet metallicity", 0.5)


def v_r_histogram(table, show_bad: bool = False):
    return draw.column_histogram(table, show_bad, "bn_v_r", "v_r", "v_r (km/s)", "BossNet radial velocity", 20.0)


PLOTS = (("kiel", kiel), ("fe_h", fe_h_histogram), ("v_r", v_r_histogram))
STELLAR_PLOTS = PLOTS[:2]
"""The plots of the sources whose model gives no radial velocity."""
