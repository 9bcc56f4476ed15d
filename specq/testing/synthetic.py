"""Synthetic stellar spectra written in the SDSS file formats, with known labels.

The demo, the tests and the benchmarks need spectra without downloading SDSS data.
This module makes plausible (not science-grade) spectra whose lines depend on
Teff, log g and [Fe/H], and writes them exactly in the layouts of the SDSS data models
(spec-lite, mwmVisit, mwmStar, apStar: HDUs, column names, dtypes, dimensions, the
header keywords the readers use), so the readers see real layouts.

Every file is marked ``SPECQSYN = T`` and carries its true labels: ``SYNTEFF``,
``SYNLOGG``, ``SYNFEH``, ``SYNVR`` (the Doppler shift applied to the pixels, km/s),
``SYNSNR`` and, for APOGEE, ``SYNFMAG`` (the astroNN "fakemag" luminosity). Single-
spectrum files carry them in HDU 0; in MWM tables each row has its own cards in the
table header (``SYNTE000``, ``SYNLG000``, ``SYNFE000``, ``SYNVR000``, ``SYNSN000``,
``SYNFM000`` for row 0 …) and HDU 0 has the file-level cards when all rows agree.

Noise: per pixel sigma = flux / snr (a constant S/N), Gaussian, from ``seed``;
``ivar = 1 / sigma**2``. Files are written atomically (temporary name in the same
folder, then rename), so a watcher never sees half a file.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from workers.readers.formats import PRODUCTS

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

V_ASTRA = "0.8.1"
SYNTHETIC_GAIA_BASE = 5_000_000_000_000_000_000  # + sdss_id: the GAIA3_ID of a synthetic MWM file


# --------------------------------------------------------------------------- grids
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


# --------------------------------------------------------------------------- physics-ish
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


# --------------------------------------------------------------------------- FITS writing
# A small FITS writer of our own: astropy needs ~50 ms to build one wide table (card
# objects, ColDefs), which made a 50-file data set take ~15 s; writing the cards and the
# big-endian bytes directly takes ~2 ms and gives exact control over every TFORM/TDIM
# (e.g. the 0-length pixel columns of astra's empty HDUs). The tests read every file
# back with astropy (with verification) and fitsio.
_BLOCK = 2880
_BITPIX = {"u1": 8, "i2": 16, "i4": 32, "i8": 64, "f4": -32, "f8": -64}
_DTYPES = {"K": ">i8", "J": ">i4", "I": ">i2", "E": ">f4", "D": ">f8", "B": "u1"}


def _format_value(value: Any) -> str:
    """A header value in FITS fixed format (20 columns for numbers and logicals)."""
    if value is None:
        return " " * 20  # an undefined value, as astra writes for missing photometry
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"FITS headers cannot hold {value}")
        return f"{repr(float(value)).upper():>20}"
    text = str(value).replace("'", "''")
    return f"{chr(39) + f'{text:<8}' + chr(39):<20}"


def _card(keyword: str, value: Any, comment: str = "") -> str:
    if len(keyword) > 8:
        raise ValueError(f"FITS keyword {keyword!r} is longer than 8 characters")
    card = f"{keyword:<8}= {_format_value(value)}"
    if len(card) > 80:
        raise ValueError(f"header value of {keyword} does not fit one card")
    if comment:
        card = f"{card} / {comment}"[:80]
    return card.ljust(80)


class _Header:
    """Ordered header cards; ``header[key] = value`` or ``(value, comment)`` like astropy."""

    def __init__(self, cards: Iterable[tuple[str, Any, str]] = ()):
        self._cards: dict[str, tuple[Any, str]] = {}
        for keyword, value, comment in cards:
            self[keyword] = (value, comment)

    def __setitem__(self, keyword: str, value: Any) -> None:
        comment = ""
        if isinstance(value, tuple):
            value, comment = value
        self._cards[keyword.upper()] = (value, comment)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self._cards

    def to_bytes(self) -> bytes:
        text = "".join(_card(key, value, comment) for key, (value, comment) in self._cards.items())
        text += "END".ljust(80)
        return _pad(text.encode("ascii"), b" ")


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % _BLOCK)


class _HDU:
    """A header plus the bytes of its data unit."""

    def __init__(self, header: _Header, data: bytes = b""):
        self.header = header
        self.data = data

    def to_bytes(self) -> bytes:
        return self.header.to_bytes() + _pad(self.data, b"\0")


def _primary_hdu() -> _HDU:
    return _HDU(_Header([("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", 8, "array data type"),
                         ("NAXIS", 0, "number of array dimensions"), ("EXTEND", True, "")]))


def _image_hdu(array: np.ndarray | None) -> _HDU:
    """An IMAGE extension (None: an empty one)."""
    if array is None:
        return _HDU(_Header([("XTENSION", "IMAGE", "Image extension"), ("BITPIX", 8, ""), ("NAXIS", 0, ""),
                             ("PCOUNT", 0, ""), ("GCOUNT", 1, "")]))
    array = np.asarray(array)
    kind = f"{array.dtype.kind}{array.dtype.itemsize}"
    cards = [("XTENSION", "IMAGE", "Image extension"), ("BITPIX", _BITPIX[kind], "array data type"),
             ("NAXIS", array.ndim, "number of array dimensions")]
    cards += [(f"NAXIS{axis}", size, "") for axis, size in enumerate(reversed(array.shape), start=1)]
    cards += [("PCOUNT", 0, "number of parameters"), ("GCOUNT", 1, "number of groups")]
    big_endian = array.astype(array.dtype.newbyteorder(">"), copy=False)
    return _HDU(_Header(cards), np.ascontiguousarray(big_endian).tobytes())


def _table(spec: str, nrows: int, values: dict[str, Any], npix: int = 0, name: str | None = None,
           units: dict[str, str] | None = None) -> _HDU:
    """A binary table from a ``name:TFORM`` spec (the data model's columns, in order).

    ``{n}`` in a TFORM is the pixel count. Numeric/logical TFORMs with an explicit repeat
    get a TDIM (as the SDSS files have). A zero-row table gets 1-character strings and
    0-length arrays, as astra writes them. Missing values are zeros / blanks.
    """
    fields, tforms, tdims, fill = [], [], [], []
    for item in spec.split():
        column, tform = item.split(":")
        is_pixels = "{n}" in tform
        tform = tform.replace("{n}", str(npix if nrows else 0))
        code = tform.lstrip("0123456789")
        repeat_text = tform[: len(tform) - len(code)]
        repeat = int(repeat_text) if repeat_text else 1
        if nrows == 0 and repeat_text and code not in "AL":
            repeat, tform = 0, f"0{code}"  # astra's empty tables: 0-length arrays
        if code == "A":
            if nrows == 0 and column != "date_obs":
                repeat, tform = 1, "1A"
            fields.append((column, f"S{repeat}"))
        elif code == "L":
            fields.append((column, "S1", (repeat,)) if repeat_text else (column, "S1"))
        else:
            fields.append((column, _DTYPES[code], (repeat,)) if (repeat_text or is_pixels)
                          else (column, _DTYPES[code]))
        tforms.append(tform)
        tdims.append(f"({repeat})" if (repeat_text or is_pixels) and code != "A" else None)
        fill.append((column, code))
    table = np.zeros(nrows, dtype=np.dtype(fields))
    for column, code in fill:
        if code == "L":
            truth = np.zeros(table[column].shape, dtype=bool)
            if values.get(column) is not None:
                truth[...] = np.broadcast_to(np.asarray(values[column], dtype=bool), truth.shape)
            table[column] = np.where(truth, b"T", b"F")  # FITS logicals are 'T'/'F' bytes
        elif values.get(column) is not None and nrows:
            target = table[column]
            target[...] = np.broadcast_to(np.asarray(values[column], dtype=target.dtype), target.shape)
    cards = [("XTENSION", "BINTABLE", "binary table extension"), ("BITPIX", 8, "array data type"),
             ("NAXIS", 2, "number of array dimensions"), ("NAXIS1", table.dtype.itemsize, "length of dimension 1"),
             ("NAXIS2", nrows, "length of dimension 2"), ("PCOUNT", 0, "number of group parameters"),
             ("GCOUNT", 1, "number of groups"), ("TFIELDS", len(fields), "number of table fields")]
    for number, ((column, _), tform, tdim) in enumerate(zip(fill, tforms, tdims), start=1):
        cards += [(f"TTYPE{number}", column, ""), (f"TFORM{number}", tform, "")]
        if units and units.get(column):
            cards.append((f"TUNIT{number}", units[column], ""))
        if tdim:
            cards.append((f"TDIM{number}", tdim, ""))
    if name:
        cards.append(("EXTNAME", name, "extension name"))
    return _HDU(_Header(cards), table.tobytes())


def _atomic_write(path: str | os.PathLike, hdus: list[_HDU]) -> Path:
    """Write the HDUs to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and not *.fits, so a watcher globbing *.fits ignores it until the rename.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            for hdu in hdus:
                handle.write(hdu.to_bytes())
        os.replace(temporary, path)  # atomic on POSIX within one filesystem
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%y-%m-%d %H:%M:%S")


def _mark_synthetic(header, labels: dict[str, float] | None) -> None:
    header["SPECQSYN"] = (True, "specq synthetic spectrum: not real data")
    if labels:
        _put_labels(header, labels, row=None)


_LABEL_CARDS = (("teff", "SYNTEFF", "SYNTE", "true Teff (K)"), ("logg", "SYNLOGG", "SYNLG", "true log g"),
                ("fe_h", "SYNFEH", "SYNFE", "true [Fe/H]"),
                ("v_r", "SYNVR", "SYNVR", "Doppler shift applied (km/s)"),
                ("snr", "SYNSNR", "SYNSN", "S/N per pixel of the noise"),
                ("fakemag", "SYNFMAG", "SYNFM", "true astroNN fakemag (K band)"))


def _put_labels(header, labels: dict[str, float], row: int | None) -> None:
    for key, card, stem, comment in _LABEL_CARDS:
        if labels.get(key) is not None:
            name = card if row is None else f"{stem}{row:03d}"
            header[name] = (float(labels[key]), comment)


def _shared_labels(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Labels every row agrees on (these go into HDU 0 of an MWM file)."""
    shared: dict[str, float] = {}
    for key, *_ in _LABEL_CARDS:
        values = {row.get(key) for row in rows}
        if len(values) == 1 and None not in values:
            shared[key] = values.pop()
    return shared


def _labels(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: spec.get(key) for key, *_ in _LABEL_CARDS}


def truth_from_headers(primary: Mapping[str, Any], table: Mapping[str, Any] | None = None,
                       row: int | None = None) -> dict[str, float]:
    """The labels a synthetic spectrum was made with, from its file's headers.

    Parameters
    ----------
    primary : mapping
        HDU 0's header (``SPECQSYN``, the file-level cards ``SYNTEFF`` …).
    table, row : optional
        The header of the spectrum's table and its row, for an MWM file whose rows carry
        their own cards (``SYNTE000``, ``SYNVR003`` …).

    Returns
    -------
    dict
        ``teff``, ``logg``, ``fe_h``, ``v_r``, ``snr`` and (APOGEE) ``fakemag`` — the names
        of :func:`make_dataset`'s table; empty for a file specq did not write.
    """
    if primary.get("SPECQSYN") is not True:
        return {}
    labels: dict[str, float] = {}
    for key, card, stem, _ in _LABEL_CARDS:
        value = None
        if table is not None and row is not None and row < 1000:  # row cards have 3 digits
            value = table.get(f"{stem}{row:03d}")
        if value is None:
            value = primary.get(card)
        if value is not None:
            labels[key] = float(value)
    return labels


def read_truth(path: str | os.PathLike, hdu: int = 1, row: int = 0) -> dict[str, float]:
    """The labels of the spectrum at (``hdu``, ``row``) of a synthetic file (see :func:`truth_from_headers`)."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        table = hdul[hdu].header if 0 < hdu < len(hdul) else None
        return truth_from_headers(hdul[0].header, table, row)


def _require(spec: dict[str, Any], what: str, *keys: str) -> None:
    missing = [key for key in keys if spec.get(key) is None]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")


# --------------------------------------------------------------------------- spec-lite
_COADD_COLUMNS = "FLUX:E LOGLAM:E IVAR:E AND_MASK:J OR_MASK:J WDISP:E SKY:E MODEL:E WRESL:E"
_SPALL_COLUMNS = (
    "FIELD:K MJD:K OBS:3A MJD_FINAL:D MJD_LIST:47A TAI_LIST:87A RUN2D:6A RUN1D:6A DESIGNS:55A "
    "CONFIGS:39A NEXP:I EXPTIME:E TARGET_INDEX:K FIBERID_LIST:31A SPEC_FILE:41A PROGRAMNAME:7A "
    "SURVEY:3A CADENCE:10A FIRSTCARTON:17A CARTON_TO_TARGET_PK:19A SDSS5_TARGET_FLAGS:69L "
    "OBJTYPE:16A TOO:15A TOO_ID:K CATALOGID:K CATALOGID_V0:K CATALOGID_V0P5:K CATALOGID_V1:K "
    "SDSS_ID:K SPECOBJID:29A CALIBFLUX:5E CALIBFLUX_IVAR:5E OPTICAL_PROV:21A MAG:5E PSFMAG:5E "
    "FIBER2MAG:5E CATDB_MAG:5E GAIA_G_MAG:E GRI_GAIA_TRANSFORM:K BP_MAG:E RP_MAG:E GAIA_ID:K "
    "WISE_MAG:4E TWOMASS_MAG:3E GUVCAT_MAG:2E EBV:E EBV_TYPE:3A FIBER_RA:D FIBER_DEC:D PLUG_RA:D "
    "PLUG_DEC:D RACAT:D DECCAT:D COORD_EPOCH:E PMRA:E PMDEC:E PARALLAX:E RA_LIST:87A DEC_LIST:71A "
    "DELTA_RA_LIST:63A DELTA_DEC_LIST:63A FIBER_OFFSET:K XFOCAL:71A YFOCAL:71A ZOFFSET:E "
    "LAMBDA_EFF:E BLUEFIBER:K HEALPIX:K HEALPIXGRP:K HEALPIX_PATH:68A FIELDQUALITY:4A "
    "EXP_DISP_MED:D FIELDSN2:E FIELDSNR2G_LIST:39A FIELDSNR2R_LIST:39A FIELDSNR2I_LIST:39A "
    "SPEC1_G:E SPEC1_R:E SPEC1_I:E SPEC2_G:E SPEC2_R:E SPEC2_I:E SN_MEDIAN:5E SN_MEDIAN_ALL:E "
    "AIRMASS:E SEEING20:E SEEING50:E SEEING80:E MOON_DIST:47A MOON_PHASE:39A ASSIGNED:15A "
    "ON_TARGET:15A VALID:15A DECOLLIDED:15A ANYANDMASK:K ANYORMASK:K SPECPRIMARY:K SPECBOSS:K "
    "BOSS_SPECOBJ_ID:K NSPECOBS:K SPECTROFLUX:5E SPECTROFLUX_IVAR:5E SPECTROSYNFLUX:5E "
    "SPECTROSYNFLUX_IVAR:5E SPECTROSKYFLUX:5E WAVEMIN:E WAVEMAX:E WCOVERAGE:E CLASS:6A "
    "SUBCLASS:21A Z:E Z_ERR:E ZWARNING:K RCHI2:E DOF:K RCHI2DIFF:E TFILE:24A TCOLUMN:10K NPOLY:K "
    "THETA:10E VDISP:E VDISP_ERR:E VDISPZ:E VDISPZ_ERR:E VDISPCHI2:E VDISPNPIX:E VDISPDOF:K "
    "CHI68P:E FRACNSIGMA:10E FRACNSIGHI:10E FRACNSIGLO:10E Z_NOQSO:E Z_ERR_NOQSO:E ZNUM_NOQSO:K "
    "ZWARNING_NOQSO:K CLASS_NOQSO:6A SUBCLASS_NOQSO:21A RCHI2DIFF_NOQSO:E XCSAO_RV:E XCSAO_ERV:E "
    "XCSAO_RXC:E XCSAO_TEFF:E XCSAO_ETEFF:E XCSAO_LOGG:E XCSAO_ELOGG:E XCSAO_FEH:E XCSAO_EFEH:E")
# Optical night-sky emission lines (vacuum Å) for the SKY column and the BRIGHTSKY bit.
_SKY_LINES = (5578.89, 5891.58, 5897.56, 6302.05, 6365.54, 7343.0, 7823.0, 8346.0, 8401.0,
              8432.0, 8829.0, 8886.0, 8921.0, 9378.0, 9441.0, 9792.0)


def _boss_sky(wavelength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth sky continuum plus emission lines, and the pixels they make bright."""
    sky = 2.0 + 1.5 * (wavelength / 10000.0) ** 2
    bright = np.zeros(wavelength.shape, dtype=bool)
    for centre in _SKY_LINES:
        profile = np.exp(-0.5 * ((wavelength - centre) / 1.5) ** 2)
        sky += 40.0 * profile
        bright |= profile > 0.1
    return sky, bright


def write_spec_lite(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, v_r: float,
                    snr: float, seed: int, catalogid: int = 27021598150202075, field: int = 112360,
                    mjd: int = 60000, sdss_id: int | None = None, k_mag: float | None = None,
                    ebv: float | None = None, lowercase: bool = False) -> list[dict[str, Any]]:
    """Write a BOSS spec-lite file (``specLite.yaml``): HDU 0, HDU 1 COADD, HDU 2 SPALL.

    Parameters
    ----------
    path : path-like
        Conventionally ``spec-{field:06d}-{mjd}-{catalogid}.fits``.
    teff, logg, fe_h, v_r, snr : float
        True labels, Doppler shift (km/s) and S/N per pixel.
    seed : int
        Seeds brightness and noise.
    catalogid, field, mjd, sdss_id : int
        Identity (SPALL row and primary header).
    k_mag, ebv : float, optional
        Written to SPALL ``TWOMASS_MAG[2]`` and ``EBV``.
    lowercase : bool
        Write the COADD the pre-DR18 way: 8 lower-case columns (no WRESL).

    Returns
    -------
    list of dict
        One entry: ``hdu``, ``row``, ``instrument``, ``is_visit`` and the labels.
    """
    rng = np.random.default_rng(seed)
    wavelength = boss_wavelength()
    loglam = (BOSS_CRVAL + BOSS_CDELT * np.arange(BOSS_NPIX)).astype(np.float32)
    model = boss_flux(wavelength, teff, logg, fe_h, v_r, rng)
    flux, sigma = _noisy(model, snr, rng)
    sky, bright = _boss_sky(wavelength)
    or_mask = np.where(bright, BOSS_BRIGHTSKY, 0).astype(np.int32)
    wdisp = np.linspace(1.15, 0.95, BOSS_NPIX, dtype=np.float32)  # pixels
    wresl = (wavelength * np.log(10.0) * BOSS_CDELT * 2.355 * wdisp).astype(np.float32)
    pixel_columns = {"FLUX": flux, "LOGLAM": loglam, "IVAR": _ivar(sigma), "AND_MASK": 0,
                     "OR_MASK": or_mask, "WDISP": wdisp, "SKY": sky, "MODEL": model, "WRESL": wresl}
    units = {"FLUX": "10^-17 ergs/s/cm^2/Angs", "LOGLAM": "log10(Angs)", "WDISP": "Pixels",
             "SKY": "10^-17 ergs/s/cm^2/Angs", "WRESL": "Angs"}
    spec = _COADD_COLUMNS
    if lowercase:  # DR17 and earlier: lower-case names, no WRESL
        spec = spec.lower().replace(" wresl:e", "").replace(":e", ":E").replace(":j", ":J")
        pixel_columns = {name.lower(): value for name, value in pixel_columns.items()}
        units = {name.lower(): unit for name, unit in units.items()}
    coadd = _table(spec, BOSS_NPIX, pixel_columns, name="COADD", units=units)

    primary = _primary_hdu()
    header = primary.header
    ra, dec = _sky_position(seed)
    for key, value in (("TELESCOP", "SDSS 2.5-M"), ("OBSERVAT", "APO"), ("NEXP", 4),
                       ("EXPTIME", 3600.0), ("FIELDID", int(field)), ("MJD", int(mjd)),
                       ("RA", ra), ("DEC", dec), ("RADEG", ra), ("DECDEG", dec), ("EQUINOX", 2000.0),
                       ("RADECSYS", "FK5"), ("RUN2D", "v6_1_3"), ("VACUUM", True),
                       ("CRVAL1", BOSS_CRVAL), ("CD1_1", BOSS_CDELT), ("CRPIX1", 1.0),
                       ("CTYPE1", "LOG-LINEAR"), ("DC-FLAG", 1), ("HELIO_RV", 0.0)):
        header[key] = value
    _mark_synthetic(header, {"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr})

    twomass = [np.nan, np.nan, np.nan] if k_mag is None else [k_mag + 0.7, k_mag + 0.15, k_mag]
    spall = _table(_SPALL_COLUMNS, 1, {
        "FIELD": field, "MJD": mjd, "OBS": "APO", "MJD_FINAL": float(mjd), "MJD_LIST": str(mjd),
        "RUN2D": "v6_1_3", "RUN1D": "v6_1_3", "NEXP": 4, "EXPTIME": 3600.0,
        "SPEC_FILE": f"spec-{int(field):06d}-{int(mjd)}-{int(catalogid)}.fits",
        "PROGRAMNAME": "mwm", "SURVEY": "MWM", "OBJTYPE": "science",
        "CATALOGID": catalogid, "CATALOGID_V1": catalogid, "SDSS_ID": sdss_id or 0,
        "TWOMASS_MAG": twomass, "EBV": np.nan if ebv is None else ebv, "EBV_TYPE": "SFD",
        "FIBER_RA": ra, "FIBER_DEC": dec, "PLUG_RA": ra, "PLUG_DEC": dec, "RACAT": ra, "DECCAT": dec,
        "SN_MEDIAN_ALL": snr, "SN_MEDIAN": [snr] * 5, "CLASS": "STAR", "SUBCLASS": "synthetic",
        "WAVEMIN": float(wavelength[0]), "WAVEMAX": float(wavelength[-1]),
        "WCOVERAGE": float(np.log10(wavelength[-1] / wavelength[0])),
        "Z": v_r / C_KMS, "XCSAO_RV": v_r, "SPECPRIMARY": 1, "SPECBOSS": 1, "NSPECOBS": 1,
    }, name="SPALL")
    _atomic_write(path, [primary, coadd, spall])
    return [{"hdu": 1, "row": 0, "instrument": "boss", "is_visit": True,
             **_labels({"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr})}]


def _sky_position(seed: int) -> tuple[float, float]:
    position = np.random.default_rng([seed, 7])
    return float(position.uniform(0, 360)), float(np.degrees(np.arcsin(position.uniform(-1, 1))))


# --------------------------------------------------------------------------- MWM
_MWM_PRIMARY_KEYS = (
    "SDSS_ID APOGEEID GAIA2_ID GAIA3_ID TIC_ID HEALPIX LEAD VER_ID CAT_ID CAT_ID21 CAT_ID25 CAT_ID31 "
    "N_ASSOC N_NEIGH RA DEC L B PLX E_PLX PMRA E_PMRA PMDE E_PMDE V_RAD E_V_RAD G_MAG BP_MAG RP_MAG "
    "J_MAG E_J_MAG H_MAG E_H_MAG K_MAG E_K_MAG PH_QUAL BL_FLG CC_FLG W1_MAG E_W1_MAG W1_FLUX "
    "W1_DFLUX W1_FRAC W2_MAG E_W2_MAG W2_FLUX W2_DFLUX W2_FRAC W1UFLAGS W2UFLAGS W1AFLAGS W2AFLAGS "
    "MAG4_5 D4_5M RMS_F4_5 SQF_4_5 MF4_5 CSF N_BOSS B_MINMJD N_MAXMJD N_APOGEE A_MINMJD A_MAXMJD").split()

_STAR_BOSS_COLUMNS = (
    "spectrum_pk_id:K release:5A filetype:7A v_astra:5A healpix:J sdss_id:K run2d:6A telescope:6A "
    "min_mjd:J max_mjd:J n_visits:J n_good_visits:J n_good_rvs:J v_rad:E e_v_rad:E std_v_rad:E "
    "median_e_v_rad:E xcsao_teff:E xcsao_e_teff:E xcsao_logg:E xcsao_e_logg:E xcsao_fe_h:E "
    "xcsao_e_fe_h:E xcsao_meanrxc:E snr:E gri_gaia_transform_flags:K zwarning_flags:K "
    "wavelength:{n}E flux:{n}E ivar:{n}E pixel_flags:{n}E continuum:{n}E "
    "nmf_rectified_model_flux:{n}E nmf_rchi2:E nmf_flags:K")
_STAR_APOGEE_COLUMNS = (
    "spectrum_pk:K release:5A filetype:7A v_astra:5A healpix:J sdss_id:K apred:4A obj:18A "
    "telescope:6A min_mjd:J max_mjd:J n_entries:J n_visits:J n_good_visits:J n_good_rvs:J snr:E "
    "mean_fiber:E std_fiber:E spectrum_flags:K v_rad:E e_v_rad:E std_v_rad:E median_e_v_rad:E "
    "doppler_teff:E doppler_e_teff:E doppler_logg:E doppler_e_logg:E doppler_fe_h:E "
    "doppler_e_fe_h:E doppler_rchi2:E doppler_flags:K xcorr_v_rad:E xcorr_v_rel:E xcorr_e_v_rel:E "
    "ccfwhm:E autofwhm:E n_components:J wavelength:{n}E flux:{n}E ivar:{n}E pixel_flags:{n}E "
    "continuum:{n}E nmf_rectified_model_flux:{n}E nmf_rchi2:E nmf_flags:K")
_VISIT_BOSS_COLUMNS = (
    "spectrum_pk_id:K drp_spectrum_pk_id:K release:5A filetype:8A v_astra:5A healpix:J sdss_id:K "
    "run2d:6A mjd:J fieldid:J catalogid:K n_exp:J exptime:E plateid:J cartid:J mapid:J slitid:J "
    "psfsky:J preject:E n_std:J n_gal:J lowrej:J highrej:J scatpoly:J proftype:J nfitpoly:J "
    "skychi2:E schi2min:E schi2max:E alt:E az:E telescope:6A seeing:E airmass:E airtemp:E "
    "dewpoint:E humidity:E pressure:E dust_a:E dust_b:E gust_direction:E gust_speed:E "
    "wind_direction:E wind_speed:E moon_dist_mean:E moon_phase_mean:E n_guide:J tai_beg:K "
    "tai_end:K fiber_offset:L f_night_time:E delta_ra:1E delta_dec:1E snr:E in_stack:L "
    "gri_gaia_transform_flags:K zwarning_flags:K xcsao_v_rad:E xcsao_e_v_rad:E xcsao_teff:E "
    "xcsao_e_teff:E xcsao_logg:E xcsao_e_logg:E xcsao_fe_h:E xcsao_e_fe_h:E xcsao_rxc:E "
    "flux:{n}E ivar:{n}E wresl:{n}E pixel_flags:{n}E continuum:{n}E nmf_rchi2:E nmf_flags:K")
_VISIT_APOGEE_COLUMNS = (
    "spectrum_pk:K catalogid:K star_pk:K visit_pk:K rv_visit_pk:K release:5A filetype:8A "
    "v_astra:5A healpix:J sdss_id:K apred:4A plate:6A telescope:6A fiber:J mjd:J field:12A "
    "prefix:2A reduction:18A obj:18A date_obs:26A jd:E exptime:E dithered:L f_night_time:E "
    "input_ra:E input_dec:E n_frames:J assigned:J on_target:J valid:J fps:L snr:E in_stack:L "
    "spectrum_flags:K v_rad:E v_rel:E e_v_rel:E bc:E doppler_teff:E doppler_e_teff:E "
    "doppler_logg:E doppler_e_logg:E doppler_fe_h:E doppler_e_fe_h:E doppler_rchi2:E "
    "doppler_flags:K xcorr_v_rad:E xcorr_v_rel:E xcorr_e_v_rel:E ccfwhm:E autofwhm:E "
    "n_components:J flux:{n}E ivar:{n}E pixel_flags:{n}E continuum:{n}E nmf_rchi2:E nmf_flags:K")
_MWM_HDUS = ((1, "BOSS/APO", "boss", "apo"), (2, "BOSS/LCO", "boss", "lco"),
             (3, "APOGEE/APO", "apogee", "apo"), (4, "APOGEE/LCO", "apogee", "lco"))


def _as_rows(spec: dict | Sequence[dict] | None) -> list[dict[str, Any]]:
    if spec is None:
        return []
    return [dict(spec)] if isinstance(spec, dict) else [dict(item) for item in spec]


def _mwm_primary(*, sdss_id: int, catalogid: int, k_mag, ebv, plx, apogee_id, seed: int,
                 boss_mjds: list[int], apogee_mjds: list[int]):
    primary = _primary_hdu()
    header = primary.header
    header["V_ASTRA"] = V_ASTRA
    header["CREATED"] = _now()
    ra, dec = _sky_position(seed)
    # A made-up Gaia DR3 id in Gaia's range, one per source.
    known = {"SDSS_ID": int(sdss_id), "APOGEEID": apogee_id, "CAT_ID": int(catalogid),
             "GAIA3_ID": SYNTHETIC_GAIA_BASE + int(sdss_id),
             "CAT_ID31": int(catalogid), "LEAD": "gaia_dr3_source", "VER_ID": 31, "N_ASSOC": 1,
             "N_NEIGH": 0, "RA": ra, "DEC": dec, "PLX": plx, "E_PLX": None if plx is None else 0.02,
             "K_MAG": k_mag, "E_K_MAG": None if k_mag is None else 0.02,
             "J_MAG": None if k_mag is None else k_mag + 0.7, "E_J_MAG": None if k_mag is None else 0.02,
             "H_MAG": None if k_mag is None else k_mag + 0.15, "E_H_MAG": None if k_mag is None else 0.02,
             "PH_QUAL": "AAA" if k_mag is not None else None, "BL_FLG": "111", "CC_FLG": "000",
             "N_BOSS": len(boss_mjds), "B_MINMJD": min(boss_mjds) if boss_mjds else None,
             "N_MAXMJD": max(boss_mjds) if boss_mjds else None,  # sic: the data model's name
             "N_APOGEE": len(apogee_mjds) or None, "A_MINMJD": min(apogee_mjds) if apogee_mjds else None,
             "A_MAXMJD": max(apogee_mjds) if apogee_mjds else None}
    for key in _MWM_PRIMARY_KEYS:
        value = known.get(key)
        header[key] = float(value) if isinstance(value, (float, np.floating)) else value
    if ebv is not None:
        # Not in the SDSS data model (astra takes E(B-V) from its database): a specq extra
        # so synthetic AstroNN inputs are complete. Readers look for EBV / SFD_EBV.
        header["EBV"] = (float(ebv), "E(B-V) (specq synthetic extra)")
    header["SPECQSYN"] = (True, "specq synthetic spectrum: not real data")
    return primary


def _mwm_table_header(header, extname: str, instrument: str, telescope: str) -> None:
    crval, cdelt, npix = ((BOSS_CRVAL, BOSS_CDELT, BOSS_NPIX) if instrument == "boss"
                          else (APOGEE_CRVAL, APOGEE_CDELT, APOGEE_NPIX))
    for key, value in (("OBSRVTRY", telescope.upper()), ("INSTRMNT", instrument.upper()),
                       ("V_ASTRA", V_ASTRA), ("CREATED", _now()), ("CRVAL", crval), ("CDELT", cdelt),
                       ("CTYPE", "LOG-LINEAR"), ("CUNIT", "Angstrom (Vacuum)"), ("CRPIX", 1),
                       ("DC-FLAG", 1), ("NPIXELS", npix)):
        header[key] = value


def _mwm_pixels(spec: dict[str, Any], instrument: str) -> dict[str, np.ndarray]:
    """Flux, ivar, flags, continuum of one MWM row (rest of the row is metadata)."""
    rng = np.random.default_rng(spec["seed"])
    if instrument == "boss":
        wavelength = boss_wavelength()
        model = boss_flux(wavelength, spec["teff"], spec["logg"], spec["fe_h"], spec.get("v_r", 0.0), rng)
        continuum = _planck(wavelength, spec["teff"])
        flags = np.zeros(BOSS_NPIX)
    else:
        wavelength = apogee_wavelength()
        model = apogee_flux(wavelength, spec["teff"], spec["logg"], spec["fe_h"], spec.get("v_r", 0.0), rng)
        continuum = _planck(wavelength, spec["teff"])
        flags = np.where(apogee_on_chip(wavelength), 0, APOGEE_BADPIX)
    flux, sigma = _noisy(model, spec["snr"], rng)
    on = model > 0
    continuum *= np.median(model[on] / continuum[on]) if on.any() else 0.0
    continuum[~on] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rectified = np.where(continuum > 0, model / np.where(continuum > 0, continuum, 1.0), 0.0)
    return {"wavelength": wavelength, "flux": flux, "ivar": _ivar(sigma),
            "pixel_flags": flags.astype(np.float32), "continuum": continuum,
            "nmf_rectified_model_flux": rectified,
            "wresl": wavelength * np.log(10.0) * BOSS_CDELT * 2.355 if instrument == "boss" else None}


def _write_mwm(path, kind: str, rows_by_hdu: dict[int, list[dict[str, Any]]], *, sdss_id: int,
               catalogid: int, k_mag, ebv, plx, apogee_id) -> list[dict[str, Any]]:
    specs = {("mwmStar", "boss"): _STAR_BOSS_COLUMNS, ("mwmStar", "apogee"): _STAR_APOGEE_COLUMNS,
             ("mwmVisit", "boss"): _VISIT_BOSS_COLUMNS, ("mwmVisit", "apogee"): _VISIT_APOGEE_COLUMNS}
    all_rows = [row for rows in rows_by_hdu.values() for row in rows]
    seed = int(all_rows[0]["seed"]) if all_rows else int(sdss_id)
    primary = _mwm_primary(
        sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag, ebv=ebv, plx=plx, apogee_id=apogee_id, seed=seed,
        boss_mjds=[r.get("mjd", 60000) for i in (1, 2) for r in rows_by_hdu[i]],
        apogee_mjds=[r.get("mjd", 60000) for i in (3, 4) for r in rows_by_hdu[i]])
    _put_labels(primary.header, _shared_labels([_labels(r) for r in all_rows]), row=None)
    hdus = [primary]
    written: list[dict[str, Any]] = []
    for index, extname, instrument, telescope in _MWM_HDUS:
        rows = rows_by_hdu[index]
        npix = BOSS_NPIX if instrument == "boss" else APOGEE_NPIX
        values: dict[str, Any] = {}
        if rows:
            pixels = [_mwm_pixels(row, instrument) for row in rows]
            for column in ("wavelength", "flux", "ivar", "pixel_flags", "continuum",
                           "nmf_rectified_model_flux", "wresl"):
                if pixels[0][column] is not None:
                    values[column] = np.stack([p[column] for p in pixels])
            count = len(rows)
            mjds = [int(row.get("mjd", 60000 + i)) for i, row in enumerate(rows)]
            # A unique made-up primary key per row unless the caller gives one.
            pks = [int(row.get("spectrum_pk", int(sdss_id) * 10**4 + index * 1000 + i + 1))
                   for i, row in enumerate(rows)]
            values.update({
                "release": "dr20", "filetype": kind, "v_astra": V_ASTRA, "sdss_id": [sdss_id] * count,
                "telescope": f"{telescope}25m" if instrument == "apogee" else telescope,
                "snr": [row["snr"] for row in rows],
                "spectrum_pk_id" if instrument == "boss" else "spectrum_pk": pks,
                "v_rad": [row.get("v_r", 0.0) for row in rows],
            })
            if kind == "mwmVisit":
                values.update({"mjd": mjds, "catalogid": [int(row.get("catalogid", catalogid)) for row in rows],
                               "in_stack": [True] * count})
                if instrument == "boss":
                    values.update({"fieldid": [int(row.get("field", 112360)) for row in rows],
                                   "run2d": "v6_1_3", "n_exp": 4, "exptime": 3600.0,
                                   "xcsao_v_rad": values["v_rad"]})
                else:
                    values.update({"obj": apogee_id or "", "apred": "1.3", "prefix": "ap"})
            else:
                n_visits = [row.get("n_visits", 1) for row in rows]
                values.update({"min_mjd": min(mjds), "max_mjd": max(mjds), "n_visits": n_visits,
                               "n_good_visits": n_visits})
                if instrument == "boss":
                    values.update({"run2d": "v6_1_3"})
                else:
                    values.update({"obj": apogee_id or "", "apred": "1.3", "n_entries": 1})
        table = _table(specs[(kind, instrument)], len(rows), values, npix=npix, name=extname)
        _mwm_table_header(table.header, extname, instrument, telescope)
        for i, row in enumerate(rows):
            _put_labels(table.header, _labels(row), row=i)
            written.append({"hdu": index, "row": i, "instrument": instrument,
                            "is_visit": kind == "mwmVisit", **_labels(row)})
        hdus.append(table)
    _atomic_write(path, hdus)
    return written


def _split_by_hdu(rows: list[dict[str, Any]], default_instrument: str | None) -> dict[int, list[dict[str, Any]]]:
    by_hdu: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: [], 4: []}
    for row in rows:
        instrument = (row.get("instrument") or default_instrument or "boss").lower()
        telescope = str(row.get("telescope", "apo")).lower()[:3]
        if instrument not in ("boss", "apogee") or telescope not in ("apo", "lco"):
            raise ValueError(f"instrument must be boss/apogee and telescope apo/lco, got {instrument}/{telescope}")
        _require(row, f"{instrument} spectrum", "teff", "logg", "fe_h", "snr", "seed")
        index = {("boss", "apo"): 1, ("boss", "lco"): 2, ("apogee", "apo"): 3, ("apogee", "lco"): 4}[
            (instrument, telescope)]
        by_hdu[index].append(row)
    return by_hdu


def write_mwm_visit(path: str | os.PathLike, visits: Iterable[dict[str, Any]], *, sdss_id: int,
                    catalogid: int, k_mag: float | None = None, ebv: float | None = None,
                    plx: float | None = None, apogee_id: str | None = None) -> list[dict[str, Any]]:
    """Write an mwmVisit file (``mwmVisit.yaml``, DR20 layout): one row per visit.

    Parameters
    ----------
    path : path-like
        Conventionally ``mwmVisit-0.8.1-{sdss_id}.fits``.
    visits : iterable of dict
        Each: ``teff``, ``logg``, ``fe_h``, ``snr``, ``seed``; optional ``v_r`` (km/s,
        default 0), ``instrument`` (``"boss"`` default, or ``"apogee"``), ``telescope``
        (``"apo"`` default, or ``"lco"``), ``mjd``, ``catalogid``, ``spectrum_pk``.
        BOSS visits go to HDUs 1/2, APOGEE visits to HDUs 3/4.
    sdss_id, catalogid : int
    k_mag, ebv, plx : float, optional
        Primary header ``K_MAG``, ``EBV`` (a specq extra), ``PLX``.
    apogee_id : str, optional

    Returns
    -------
    list of dict
        One per row written: ``hdu``, ``row``, ``instrument``, ``is_visit`` and labels.
    """
    rows = _split_by_hdu(_as_rows(list(visits)), None)
    return _write_mwm(path, "mwmVisit", rows, sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag,
                      ebv=ebv, plx=plx, apogee_id=apogee_id)


def write_mwm_star(path: str | os.PathLike, boss: dict | Sequence[dict] | None = None,
                   apogee: dict | Sequence[dict] | None = None, *, sdss_id: int, catalogid: int,
                   k_mag: float | None = None, ebv: float | None = None, plx: float | None = None,
                   apogee_id: str | None = None) -> list[dict[str, Any]]:
    """Write an mwmStar file (``mwmStar.yaml``, DR20 layout): combined spectra.

    Parameters
    ----------
    path : path-like
        Conventionally ``mwmStar-0.8.1-{sdss_id}.fits``.
    boss, apogee : dict or list of dict, optional
        The combined BOSS / APOGEE spectrum (a list for one per telescope). Keys as for
        :func:`write_mwm_visit` visits, plus ``fakemag`` for APOGEE. None → zero rows.
    sdss_id, catalogid : int
    k_mag, ebv, plx : float, optional
    apogee_id : str, optional

    Returns
    -------
    list of dict
        One per row written.
    """
    rows = [dict(row, instrument="boss") for row in _as_rows(boss)]
    rows += [dict(row, instrument="apogee") for row in _as_rows(apogee)]
    by_hdu = _split_by_hdu(rows, None)
    for index, hdu_rows in by_hdu.items():
        if len(hdu_rows) > 1:
            raise ValueError(f"mwmStar holds one combined spectrum per instrument and telescope, "
                             f"got {len(hdu_rows)} for HDU {index}")
    return _write_mwm(path, "mwmStar", by_hdu, sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag,
                      ebv=ebv, plx=plx, apogee_id=apogee_id)


# --------------------------------------------------------------------------- apStar
_APSTAR_RV_COLUMNS = (
    "FILENAME:300A SNR:D VHELIO:D VREL:D VRELERR:D TEFF:D TEFFERR:D LOGG:D LOGGERR:D FEH:D FEHERR:D "
    "CHISQ:D BC:D X_CCF:801D CCF:801D CCFERR:801D XCORR_VREL:D XCORR_VRELERR:D XCORR_VHELIO:D")
_APSTAR_IMAGES = ((1, "Flux (10^-17 erg/s/cm^2/Ang)"), (2, "Err (10^-17 erg/s/cm^2/Ang)"),
                  (3, "Pixel bitmask"), (4, "Sky (10^-17 erg/s/cm^2/Ang)"),
                  (5, "Sky error (10^-17 erg/s/cm^2/Ang)"), (6, "Telluric"), (7, "Telluric error"))
# A few bright OH lines in the H band (vacuum Å): flagged SIG_SKYLINE like real data.
_OH_LINES = (15240.0, 15432.0, 15539.0, 15631.0, 15893.0, 16128.0, 16235.0, 16351.0, 16502.0, 16692.0)


def write_apstar(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, fakemag: float,
                 snr: float, seed: int, nvisits: int = 1, apogee_id: str = "2M00000000+0000000",
                 k_mag: float | None = None, ebv: float | None = None, v_r: float = 0.0,
                 catalogid: int | None = None, release: str = "DR17") -> list[dict[str, Any]]:
    """Write an apStar file (``apStar.yaml``): FLUX/ERR/MASK/SKY/…/RV table.

    One visit → 1-D images (one row); several → NVISITS + 2 rows: row 0 the combined
    spectrum (mean of the visits), row 1 the same (the other weighting), then the visits.
    Spectra are rest-frame, as in apStar files; ``v_r`` shifts them (default 0) and goes
    into ``VHELIO``.

    Parameters
    ----------
    path : path-like
        Conventionally ``apStar-1.0-apo25m-{apogee_id}.fits``.
    teff, logg, fe_h : float
    fakemag : float
        True astroNN fakemag (``SYNFMAG``); it does not change the pixels.
    snr : float
        S/N per pixel of the combined spectrum (visits: snr / sqrt(nvisits)).
    seed : int
    nvisits : int
    apogee_id : str
    k_mag, ebv : float, optional
        ``K``/``SFD_EBV`` (DR17) or ``KMAG`` (DR19, which has no E(B−V) card).
    catalogid : int, optional
        ``CATID`` (DR19).
    release : {"DR17", "DR19"}
        Which primary-header vocabulary to write.

    Returns
    -------
    list of dict
        One entry for the combined spectrum (HDU 1, row 0).
    """
    if nvisits < 1:
        raise ValueError("nvisits must be at least 1")
    if release not in ("DR17", "DR19"):
        raise ValueError("release must be 'DR17' or 'DR19'")
    rng = np.random.default_rng(seed)
    wavelength = apogee_wavelength()
    model = apogee_flux(wavelength, teff, logg, fe_h, v_r, rng)
    on_chip = apogee_on_chip(wavelength)
    visit_snr = snr / np.sqrt(nvisits)
    visits = [_noisy(model, visit_snr, rng) for _ in range(nvisits)]
    visit_flux = np.stack([flux for flux, _ in visits])
    visit_err = np.stack([sigma for _, sigma in visits])
    combined = visit_flux.mean(axis=0)
    combined_err = np.sqrt((visit_err ** 2).sum(axis=0)) / nvisits
    mask_row = np.where(on_chip, 0, APOGEE_BADPIX).astype(np.int64)
    for line in _OH_LINES:
        mask_row[np.abs(wavelength - line) < 1.0] |= APOGEE_SIG_SKYLINE
    if nvisits == 1:
        flux, err, mask = combined, combined_err, mask_row
    else:
        flux = np.vstack([combined, combined, visit_flux])
        err = np.vstack([combined_err, combined_err, visit_err])
        mask = np.vstack([mask_row] * (nvisits + 2))
    err = np.where(on_chip, err, APOGEE_BADERR)
    sky = np.where(on_chip, 50.0, 0.0) * np.ones_like(flux)
    telluric = np.where(on_chip, 0.98, 1.0) * np.ones_like(flux)
    images = {1: flux.astype(np.float64), 2: err.astype(np.float64), 3: mask, 4: sky,
              5: np.where(on_chip, 1.0, APOGEE_BADERR) * np.ones_like(flux), 6: telluric,
              7: np.where(on_chip, 0.01, 0.0) * np.ones_like(flux)}

    primary = _primary_hdu()
    header = primary.header
    ra, dec = _sky_position(seed)
    cards: list[tuple[str, Any]] = [("CRVAL1", APOGEE_CRVAL), ("CDELT1", APOGEE_CDELT), ("CRPIX1", 1),
                                    ("CTYPE1", "LOG-LINEAR"), ("DC-FLAG", 1)]
    missing = -9999.990234375  # APOGEE's "no value"
    if release == "DR17":
        cards += [("NWAVE", APOGEE_NPIX), ("FIELD", "SYNTHETIC"), ("OBJID", apogee_id), ("SNR", float(snr)),
                  ("RA", ra), ("DEC", dec),
                  ("J", 99.99 if k_mag is None else k_mag + 0.7), ("J_ERR", 0.02),
                  ("H", 99.99 if k_mag is None else k_mag + 0.15), ("H_ERR", 0.02),
                  ("K", 99.99 if k_mag is None else float(k_mag)),
                  ("K_ERR", 0.02 if k_mag is not None else missing),
                  ("SFD_EBV", missing if ebv is None else float(ebv))]
    else:
        cards += [("OBJID", apogee_id), ("APRED", "1.0"), ("SNR", float(snr)), ("RA", ra), ("DEC", dec),
                  ("JMAG", 99.99 if k_mag is None else k_mag + 0.7), ("JERR", missing),
                  ("HMAG", 99.99 if k_mag is None else k_mag + 0.15), ("HERR", missing),
                  ("KMAG", 99.99 if k_mag is None else float(k_mag)),
                  ("KERR", 0.02 if k_mag is not None else missing),
                  ("CATID", int(catalogid) if catalogid is not None else 0),
                  ("PLX", missing), ("EPLX", missing)]
    cards += [("NVISITS", int(nvisits)), ("STARFLAG", 0), ("ANDFLAG", 0), ("N_COMP", 1),
              ("VHELIO" if release == "DR17" else "VRAD", float(v_r)), ("VSCATTER", 0.0),
              ("RV_TEFF", float(teff)), ("RV_LOGG", float(logg)), ("RV_FEH", float(fe_h))]
    for visit in range(1, nvisits + 1):
        # Visits a few nights apart from MJD 59280 (JD 2459280.5 + 0.4).
        cards += [(f"SFILE{visit}", f"apVisit-synthetic-{visit}.fits"),
                  (f"JD{visit}", 2459280.9 + 3.0 * (visit - 1)), (f"SNRVIS{visit}", float(visit_snr))]
    for key, value in cards:
        header[key] = value
    _mark_synthetic(header, {"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr,
                             "fakemag": fakemag})
    hdus: list = [primary]
    for index, unit in _APSTAR_IMAGES:
        image = _image_hdu(images[index])
        for key, value in (("CRVAL1", APOGEE_CRVAL), ("CDELT1", APOGEE_CDELT), ("CRPIX1", 1),
                           ("CTYPE1", "LOG-LINEAR"), ("BUNIT", unit)):
            image.header[key] = value
        hdus.append(image)
    hdus.append(_table("", 0, {}) if release == "DR19" else _image_hdu(None))  # the (empty) LSF HDU
    hdus.append(_table(_APSTAR_RV_COLUMNS, nvisits, {
        "FILENAME": [f"apVisit-synthetic-{v}.fits" for v in range(1, nvisits + 1)],
        "SNR": [visit_snr] * nvisits, "VHELIO": [v_r] * nvisits, "TEFF": [teff] * nvisits,
        "LOGG": [logg] * nvisits, "FEH": [fe_h] * nvisits}))
    _atomic_write(path, hdus)
    return [{"hdu": 1, "row": 0, "instrument": "apogee", "is_visit": False,
             **_labels({"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr,
                        "fakemag": fakemag})}]


# --------------------------------------------------------------------------- data sets
def _draw_star(rng: np.random.Generator) -> dict[str, float]:
    """Plausible labels: a mix of dwarfs and giants."""
    if rng.random() < 0.4:  # giant branch
        teff = float(rng.uniform(3800.0, 5300.0))
        logg = float(np.clip(1.0 + (teff - 3800.0) / 1500.0 * 2.3 + rng.normal(0, 0.2), 0.5, 3.6))
    else:  # main sequence
        teff = float(rng.uniform(3600.0, 9000.0))
        logg = float(np.clip(4.2 + (5500.0 - teff) / 8000.0 + rng.normal(0, 0.1), 3.8, 5.0))
    fe_h = float(np.clip(rng.normal(-0.25, 0.35), -2.0, 0.5))
    # astroNN fakemag = 10**(0.2 M_K + 2); M_K from a rough log g relation.
    absolute_k = -1.5 + 2.0 * (logg - 2.5)
    return {"teff": round(teff, 1), "logg": round(logg, 3), "fe_h": round(fe_h, 3),
            "fakemag": round(float(10.0 ** (0.2 * absolute_k + 2.0)), 4),
            "k_mag": round(float(rng.uniform(7.0, 13.0)), 3), "ebv": round(float(rng.uniform(0.01, 0.4)), 4)}


def make_dataset(folder: str | os.PathLike, n_boss: int = 20, n_apogee: int = 10, seed: int = 0,
                 formats: Sequence[str] = PRODUCTS):
    """Write a small mixed data set of synthetic SDSS files and return its truth table.

    BOSS spectra are spread over spec-lite files, mwmVisit files (2–3 visits of one
    star) and mwmStar files; APOGEE spectra over apStar files (1–3 visits) and the
    APOGEE rows of mwmStar files (sharing the star with a BOSS row where one is free).
    Files go to ``boss/``, ``mwm/`` and ``apogee/`` under ``folder``.

    Parameters
    ----------
    folder : path-like
    n_boss, n_apogee : int
        How many BOSS / APOGEE spectra a pipeline will find.
    seed : int
    formats : sequence of str
        Which of ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"``, ``"apStar"`` to use.

    Returns
    -------
    astropy.table.Table
        One row per spectrum: ``path`` (relative to ``folder``), ``hdu``, ``row``,
        ``format``, ``instrument``, ``is_visit``, ``teff``, ``logg``, ``fe_h``, ``v_r``,
        ``snr``, ``k_mag``, ``ebv``, ``fakemag`` (NaN for BOSS), ``sdss_id``,
        ``catalogid`` (-1 where the file has none), ``apogee_id``.
    """
    from astropy.table import Table

    unknown = set(formats) - set(PRODUCTS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}: use {PRODUCTS}")
    boss_formats = [f for f in ("spec-lite", "mwmVisit", "mwmStar") if f in formats]
    apogee_formats = [f for f in ("apStar", "mwmStar") if f in formats]
    if n_boss and not boss_formats:
        raise ValueError("n_boss > 0 needs one of spec-lite, mwmVisit, mwmStar in formats")
    if n_apogee and not apogee_formats:
        raise ValueError("n_apogee > 0 needs apStar or mwmStar in formats")

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    counter = iter(range(1, 10**6))

    def new_star() -> dict[str, Any]:
        number = next(counter)
        star = _draw_star(rng)
        star.update(sdss_id=int(seed % 1000) * 10**6 + 90_000_000 + number,
                    catalogid=63050395000000000 + int(seed % 1000) * 10**6 + number,
                    apogee_id=f"2M{number:08d}+{int(seed % 10**7):07d}")
        return star

    def spectrum(star, snr_low, snr_high, v_r=None) -> dict[str, Any]:
        return {"teff": star["teff"], "logg": star["logg"], "fe_h": star["fe_h"],
                "v_r": round(float(rng.normal(0.0, 40.0)), 2) if v_r is None else v_r,
                "snr": round(float(rng.uniform(snr_low, snr_high)), 1), "seed": int(rng.integers(2**31))}

    def record(fmt, rel, written, star, *, sdss_id, catalogid, apogee_id, fakemag) -> None:
        for item in written:
            rows.append({"path": rel, "hdu": item["hdu"], "row": item["row"], "format": fmt,
                         "instrument": item["instrument"], "is_visit": item["is_visit"],
                         "teff": item["teff"], "logg": item["logg"], "fe_h": item["fe_h"],
                         "v_r": item["v_r"], "snr": item["snr"], "k_mag": star["k_mag"], "ebv": star["ebv"],
                         "fakemag": fakemag if item["instrument"] == "apogee" else np.nan,
                         "sdss_id": sdss_id, "catalogid": catalogid, "apogee_id": apogee_id})

    star_files: list[dict[str, Any]] = []  # mwmStar files still to write: BOSS and/or APOGEE
    remaining, turn = n_boss, 0
    while remaining > 0:
        fmt = boss_formats[turn % len(boss_formats)]
        turn += 1
        star = new_star()
        if fmt == "spec-lite":
            spec = spectrum(star, 15.0, 80.0)
            field, mjd = 100000 + next(counter), 60000 + int(rng.integers(0, 900))
            rel = f"boss/spec-{field:06d}-{mjd}-{star['catalogid']}.fits"
            written = write_spec_lite(folder / rel, **spec, catalogid=star["catalogid"], field=field, mjd=mjd,
                                      sdss_id=star["sdss_id"], k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                   apogee_id="", fakemag=np.nan)
            remaining -= 1
        elif fmt == "mwmVisit":
            count = int(min(remaining, rng.integers(2, 4)))
            visits = [dict(spectrum(star, 8.0, 40.0), mjd=60000 + 30 * i,
                           telescope="lco" if rng.random() < 0.3 else "apo") for i in range(count)]
            rel = f"mwm/mwmVisit-{V_ASTRA}-{star['sdss_id']}.fits"
            written = write_mwm_visit(folder / rel, visits, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                                      k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                   apogee_id="", fakemag=np.nan)
            remaining -= count
        else:
            star_files.append({"star": star, "boss": spectrum(star, 20.0, 100.0), "apogee": None})
            remaining -= 1

    remaining, turn = n_apogee, 0
    while remaining > 0:
        fmt = apogee_formats[turn % len(apogee_formats)]
        turn += 1
        if fmt == "apStar":
            star = new_star()
            spec = spectrum(star, 40.0, 200.0, v_r=0.0)
            rel = f"apogee/apStar-1.0-apo25m-{star['apogee_id']}.fits"
            written = write_apstar(folder / rel, teff=spec["teff"], logg=spec["logg"], fe_h=spec["fe_h"],
                                   fakemag=star["fakemag"], snr=spec["snr"], seed=spec["seed"],
                                   nvisits=int(rng.integers(1, 4)), apogee_id=star["apogee_id"],
                                   k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=-1, catalogid=-1, apogee_id=star["apogee_id"],
                   fakemag=star["fakemag"])
        else:
            free = next((item for item in star_files if item["apogee"] is None), None)
            if free is None:
                free = {"star": new_star(), "boss": None, "apogee": None}
                star_files.append(free)
            free["apogee"] = dict(spectrum(free["star"], 40.0, 200.0, v_r=0.0), fakemag=free["star"]["fakemag"])
        remaining -= 1

    for item in star_files:
        star = item["star"]
        rel = f"mwm/mwmStar-{V_ASTRA}-{star['sdss_id']}.fits"
        written = write_mwm_star(folder / rel, boss=item["boss"], apogee=item["apogee"], sdss_id=star["sdss_id"],
                                 catalogid=star["catalogid"], k_mag=star["k_mag"], ebv=star["ebv"],
                                 apogee_id=star["apogee_id"] if item["apogee"] else None)
        record("mwmStar", rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
               apogee_id=star["apogee_id"] if item["apogee"] else "", fakemag=star["fakemag"])

    names = ["path", "hdu", "row", "format", "instrument", "is_visit", "teff", "logg", "fe_h", "v_r",
             "snr", "k_mag", "ebv", "fakemag", "sdss_id", "catalogid", "apogee_id"]
    dtypes = [str, int, int, str, str, bool, float, float, float, float, float, float, float, float,
              np.int64, np.int64, str]
    if not rows:
        return Table(names=names, dtype=dtypes)
    return Table(rows=[[row[name] for name in names] for row in rows], names=names, dtype=dtypes)
