"""Plausible stellar spectra for the synthetic files: wavelength grids, continuum, lines, noise.

Not science-grade: the lines depend on Teff, log g and [Fe/H] so that a network's
outputs move the right way. Noise: per pixel sigma = flux / snr (a constant S/N),
Gaussian, from the caller's generator; ``ivar = 1 / sigma**2``. No FITS here.
"""
from __future__ import annotations


import numpy as np

C_KMS = 299792.458
# h c / k in Angstrom Kelvin, for the Planck continuum.
_HC_OVER_K = 1.438777e8

BOSS_CRVAL, BOSS_CDELT, BOSS_NPIX = 3.5523, 1e-4, 4648
APOGEE_CRVAL, APOGEE_CDELT, APOGEE_NPIX = 4.179, 6e-6, 8575
# Pixels of the apStar grid that fall on the three detectors (blue, green, red); the rest
# (edges and the two chip gaps) is empty in real apStar files. Same ranges astroNN cuts.
APOGEE_CHIPS = ((246, 3274), (3585, 6080), (6344, 8335))
# APOGEE_PIXMASK bits used here.
APOGEE_BADPIX = 1 << 0
APOGEE_SIG_SKYLINE = 1 << 12
# The error APOGEE writes for a pixel without data.
APOGEE_BADERR = 1.0e10
# BOSS SPPIXMASK bit 23: BRIGHTSKY.
BOSS_BRIGHTSKY = 1 << 23


def boss_wavelength() -> np.ndarray:
    """The BOSS coadd grid: 4648 pixels, log10 λ = 3.5523 + 1e-4 i (vacuum Å)."""
    return 10.0 ** (BOSS_CRVAL + BOSS_CDELT * np.arange(BOSS_NPIX))


def apogee_wavelength() -> np.ndarray:
    """The apStar grid: 8575 pixels, log10 λ = 4.179 + 6e-6 i (vacuum Å)."""
    return 10.0 ** (APOGEE_CRVAL + APOGEE_CDELT * np.arange(APOGEE_NPIX))


def apogee_on_chip(wavelength: np.ndarray) -> np.ndarray:
    """True where ``wavelength`` falls on an APOGEE detector (outside the gaps and edges)."""
    grid = apogee_wavelength()
    on_chip = np.zeros(np.shape(wavelength), dtype=bool)
    for first, end in APOGEE_CHIPS:
        on_chip |= (wavelength >= grid[first]) & (wavelength <= grid[end - 1])
    return on_chip


def _planck(wavelength: np.ndarray, teff: float) -> np.ndarray:
    """B_λ(T) up to a constant."""
    x = _HC_OVER_K / (wavelength * teff)
    return 1.0 / (wavelength ** 5 * np.expm1(np.minimum(x, 700.0)))


def _hydrogen_strength(teff: float) -> float:
    # Balmer/Brackett lines peak near A0 (~9500 K) and fade towards cool and hot stars.
    return float(np.exp(-0.5 * ((np.log10(teff) - np.log10(9500.0)) / 0.12) ** 2))


def _metal_strength(teff: float, fe_h: float) -> float:
    # Metal lines grow towards cool stars and with metallicity.
    return float(10.0 ** (0.6 * fe_h) * np.clip((7200.0 - teff) / 2500.0, 0.04, 2.0))


# (rest vacuum Å, base strength, family). Families decide the Teff/log g/[Fe/H] scaling.
_BOSS_LINES = (
    (6564.61, 2.4, "H"), (4862.68, 2.0, "H"), (4341.68, 1.7, "H"), (4102.89, 1.5, "H"),
    (3971.20, 1.3, "H"), (3890.16, 1.1, "H"), (3836.47, 0.9, "H"), (3798.98, 0.7, "H"),
    (3934.78, 2.5, "CaHK"), (3969.59, 2.0, "CaHK"),
    (4227.92, 0.9, "dwarf"), (5168.76, 0.8, "dwarf"), (5174.13, 0.9, "dwarf"), (5185.05, 1.0, "dwarf"),
    (5891.58, 1.1, "dwarf"), (5897.56, 0.9, "dwarf"),
    (8500.36, 0.9, "giant"), (8544.44, 1.3, "giant"), (8664.52, 1.2, "giant"),
    (4305.0, 0.6, "metal"), (4384.77, 0.5, "metal"), (4405.98, 0.4, "metal"), (5270.39, 0.5, "metal"),
    (5328.53, 0.4, "metal"), (6497.0, 0.3, "metal"), (6718.0, 0.3, "metal"),
)
_BOSS_BANDS = ((4955.0, 0.3), (5168.0, 0.35), (5448.0, 0.4), (6159.0, 0.5), (6652.0, 0.45),
               (7055.0, 0.6), (7589.0, 0.4), (8432.0, 0.3))  # TiO band heads (cool stars)
_APOGEE_LINES = (
    (16811.1, 1.2, "H"), (16411.7, 1.1, "H"), (16113.7, 1.0, "H"), (15884.9, 0.9, "H"),
    (15704.9, 0.8, "H"), (15560.7, 0.7, "H"), (15443.1, 0.6, "H"), (15345.9, 0.5, "H"),
    (15264.7, 0.45, "H"), (15196.0, 0.4, "H"),
    (15744.1, 0.9, "dwarf"), (15753.3, 0.9, "dwarf"), (15770.2, 1.0, "dwarf"),
    (15892.8, 0.7, "metal"), (15964.4, 0.6, "metal"), (16064.4, 0.6, "metal"), (16385.2, 0.5, "metal"),
    (16723.5, 0.7, "dwarf"), (16755.1, 0.8, "dwarf"), (16767.9, 0.6, "dwarf"),
    (15167.2, 0.5, "metal"), (15172.6, 0.5, "metal"), (16155.2, 0.5, "metal"), (16161.8, 0.4, "metal"),
)
_APOGEE_BANDS = ((15582.0, 0.25), (15780.0, 0.25), (15982.0, 0.25), (16189.0, 0.25),
                 (16401.0, 0.2), (16618.0, 0.2), (16840.0, 0.2))  # CO band heads (cool giants)


def _weak_lines(low: float, high: float, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed forest of weak metal lines: the same for every star, so only labels change it."""
    forest = np.random.default_rng(seed)
    return np.sort(forest.uniform(low, high, count)), forest.lognormal(-2.3, 0.7, count)


_BOSS_FOREST = _weak_lines(3600.0, 10400.0, 500, 20240611)
_APOGEE_FOREST = _weak_lines(15100.0, 17000.0, 400, 20240612)


def _absorb(wavelength: np.ndarray, tau: np.ndarray, centre: float, strength: float,
            sigma: float, lorentz: float = 0.0) -> None:
    """Add one line's optical depth to ``tau`` (Gaussian core, optional Lorentzian wings)."""
    if strength <= 0:
        return
    half = 8.0 * sigma + 30.0 * lorentz
    lo, hi = np.searchsorted(wavelength, (centre - half, centre + half))
    if lo >= hi:
        return
    offset = wavelength[lo:hi] - centre
    profile = np.exp(-0.5 * (offset / sigma) ** 2)
    if lorentz > 0:
        profile = np.maximum(profile, 1.0 / (1.0 + (offset / lorentz) ** 2))
    tau[lo:hi] += strength * profile


def _line_opacity(wavelength: np.ndarray, teff: float, logg: float, fe_h: float, v_r: float,
                  lines, bands, forest, resolution: float, hydrogen_width: float) -> np.ndarray:
    """Optical depth of the line list at the given labels, Doppler shifted by v_r."""
    shift = 1.0 + v_r / C_KMS
    tau = np.zeros_like(wavelength, dtype=np.float64)
    h_strength = _hydrogen_strength(teff)
    metals = _metal_strength(teff, fe_h)
    for rest, base, family in lines:
        centre = rest * shift
        sigma = centre / resolution / 2.355
        if family == "H":
            # Pressure broadening: wider wings at high gravity.
            width = hydrogen_width * (0.3 + 0.25 * logg) * (0.5 + h_strength)
            _absorb(wavelength, tau, centre, base * (0.08 + h_strength), sigma, width)
            continue
        strength = base * metals
        if family == "CaHK":
            strength *= 1.5
        elif family == "dwarf":
            strength *= 0.5 + 0.15 * logg
        elif family == "giant":
            strength *= 1.5 - 0.15 * logg
        _absorb(wavelength, tau, centre, strength, sigma * (1.0 + 0.4 * min(strength, 3.0)))
    centres, strengths = forest
    sigma_forest = float(np.median(centres)) / resolution / 2.355
    for rest, base in zip(centres, strengths):
        _absorb(wavelength, tau, rest * shift, base * metals, sigma_forest)
    # Molecular bands switch on below ~4200 K (TiO) / ~4800 K in giants (CO).
    cool = np.clip((4300.0 - teff) / 800.0, 0.0, 1.5) * 10.0 ** (0.3 * fe_h)
    for head, base in bands:
        edge = head * shift
        above = wavelength >= edge
        tau[above] += base * cool * (1.2 - 0.1 * logg) * np.exp(-(wavelength[above] - edge) / 120.0)
    return tau


def _scale(rng: np.random.Generator | None, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if rng is not None else float(np.sqrt(low * high))


def boss_flux(wavelength: np.ndarray, teff: float, logg: float, fe_h: float, v_r: float,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """A noise-free optical stellar spectrum in 1e-17 erg/s/cm²/Å.

    Planck continuum at ``teff`` times absorption by Balmer lines (strongest near
    9500 K, wider at high log g), Ca II H&K, Mg b, Na D, the Ca triplet, metal lines
    (stronger in cool and metal-rich stars) and TiO bands (below ~4200 K), shifted by
    ``v_r``.

    Parameters
    ----------
    wavelength : ndarray
        Vacuum Å.
    teff, logg, fe_h : float
        Labels (K, dex, dex).
    v_r : float
        Radial velocity, km/s.
    rng : numpy.random.Generator, optional
        Draws the overall brightness (median flux 10–100); None gives 30.

    Returns
    -------
    ndarray
        float64 flux, same shape as ``wavelength``.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    continuum = _planck(wavelength, teff)
    continuum *= _scale(rng, 10.0, 100.0) / np.median(continuum)
    tau = _line_opacity(wavelength, teff, logg, fe_h, v_r, _BOSS_LINES, _BOSS_BANDS, _BOSS_FOREST,
                        resolution=2000.0, hydrogen_width=12.0)
    return continuum * np.exp(-tau)


def apogee_flux(wavelength: np.ndarray, teff: float, logg: float, fe_h: float, v_r: float = 0.0,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A noise-free H-band stellar spectrum (1e-17 erg/s/cm²/Å), zero in the detector gaps.

    Planck continuum (median 100–1000) times Brackett lines, Mg/Si/Al/K/Ca lines, a weak
    metal-line forest and CO band heads in cool stars; pixels off the three detectors
    (see :data:`APOGEE_CHIPS`) are 0 as in apStar files.

    Parameters
    ----------
    wavelength : ndarray
        Vacuum Å (normally :func:`apogee_wavelength`).
    teff, logg, fe_h, v_r : float
    rng : numpy.random.Generator, optional
        Draws the overall brightness; None gives a fixed one.

    Returns
    -------
    ndarray
        float64 flux.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    continuum = _planck(wavelength, teff)
    continuum *= _scale(rng, 100.0, 1000.0) / np.median(continuum)
    tau = _line_opacity(wavelength, teff, logg, fe_h, v_r, _APOGEE_LINES, _APOGEE_BANDS,
                        _APOGEE_FOREST, resolution=22500.0, hydrogen_width=8.0)
    flux = continuum * np.exp(-tau)
    flux[~apogee_on_chip(wavelength)] = 0.0
    return flux


def _noisy(model: np.ndarray, snr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flux with Gaussian noise sigma = model / snr, and that sigma (0 where the model is 0)."""
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    sigma = np.abs(model) / snr
    return model + sigma * rng.standard_normal(model.shape), sigma


def _ivar(sigma: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0) ** 2, 0.0)


def _sky_position(seed: int) -> tuple[float, float]:
    position = np.random.default_rng([seed, 7])
    return float(position.uniform(0, 360)), float(np.degrees(np.arcsin(position.uniform(-1, 1))))
