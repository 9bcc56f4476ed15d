"""Per-star photometry for AstroNN distances: Ks magnitude, E(B−V) and Gaia parallax.

For each star, the first source that has a *usable* value wins:

1. the spectrum reference (``spectrum.meta["ref_photometry"]``, a dict with any of
   ``k_mag``, ``ebv``, ``plx``, ``e_plx``, ``gdr3_zeropoint``);
2. the source catalog (:class:`SourceCatalog`), matched on ``sdss_id``, ``catalogid``
   or ``apogee_id``;
3. the spectrum header (``spectrum.meta["k_mag"]``, from ``K_MAG``/``K``), Ks only.

A value that is present but unusable (a 99 sentinel, NaN…) does not stop the search: a
later source may still have it. What is still missing is flagged and replaced by 0, as
the SDSS pipeline does.

Imports numpy only (astropy lazily, when a catalog file is read): no torch, no astroNN.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# A_Ks = 0.918·(H − [4.5] − 0.08) = 0.918·E(B−V)/2.61 (the SDSS pipeline's conversion).
AK_PER_EBV = 0.3517
# Median Gaia DR3 parallax zero-point used by the astroNN DR17 VAC and, as its fallback,
# by SDSS Astra's astronn_dist (Astra computes a per-star Lindegren et al. 2021 value when
# it has the Gaia astrometric inputs; a catalog may provide one as ``gdr3_zeropoint``).
GDR3_ZEROPOINT_MEDIAN = -0.03464  # mas; corrected parallax = plx − zeropoint

KEY_COLUMNS = ("sdss_id", "catalogid", "apogee_id")  # lookup order
_KEY_ALIASES = {"sdss_id": ("sdss_id",), "catalogid": ("catalogid", "cat_id"),
                "apogee_id": ("apogee_id", "sdss4_apogee_id")}
VALUE_COLUMNS = ("k_mag", "ebv", "plx", "e_plx", "gdr3_zeropoint")


# -- validity rules -------------------------------------------------------------------

def k_mag_missing(k_mag) -> np.ndarray:
    """True where a Ks magnitude is missing: NaN/absent, non-finite, ≥ 98 or ≤ −1."""
    k = np.asarray(k_mag, dtype=float)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(k) | (k >= 98) | (k <= -1)


def ebv_missing(ebv) -> np.ndarray:
    """True where E(B−V) is missing: NaN/absent, non-finite, ≥ 98 or ≤ 0."""
    e = np.asarray(ebv, dtype=float)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(e) | (e >= 98) | (e <= 0)


def clean_photometry(k_mag, ebv) -> dict[str, np.ndarray]:
    """Apply the missing-value rules to raw per-star values (None/NaN = absent).

    Returns
    -------
    dict
        ``k_mag``, ``ebv`` (0 where missing), ``a_k_mag``, and the booleans
        ``missing_k_mag``, ``missing_ebv``.
    """
    k = np.array([np.nan if v is None else v for v in np.atleast_1d(np.asarray(k_mag, dtype=object))],
                 dtype=float)
    e = np.array([np.nan if v is None else v for v in np.atleast_1d(np.asarray(ebv, dtype=object))],
                 dtype=float)
    miss_k, miss_e = k_mag_missing(k), ebv_missing(e)
    k = np.where(miss_k, 0.0, k)
    e = np.where(miss_e, 0.0, e)
    return {"k_mag": k, "ebv": e, "a_k_mag": AK_PER_EBV * e,
            "missing_k_mag": miss_k, "missing_ebv": miss_e}


def corrected_parallax(plx, e_plx, zeropoint=None) -> dict[str, np.ndarray]:
    """Zero-point-corrected Gaia DR3 parallax, as the SDSS pipeline prepares it.

    ``plx_w_zp = plx − zeropoint`` (zeropoint defaults to the median −0.03464 mas);
    a corrected parallax that is negative, non-finite or > 1e10, or an error that is
    not positive, makes all three NaN.
    """
    plx = np.atleast_1d(np.asarray(plx, dtype=float))
    e_plx = np.atleast_1d(np.asarray(e_plx, dtype=float))
    zp = np.full(plx.shape, GDR3_ZEROPOINT_MEDIAN) if zeropoint is None \
        else np.atleast_1d(np.asarray(zeropoint, dtype=float))
    zp = np.where(np.isfinite(zp), zp, GDR3_ZEROPOINT_MEDIAN)
    corrected = plx - zp
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(corrected) | (corrected < 0) | (corrected > 1e10) | ~(e_plx > 0)
    nan = np.full(plx.shape, np.nan)
    return {"gdr3_parallax_w_zp": np.where(bad, nan, corrected),
            "gdr3_parallax_err": np.where(bad, nan, e_plx),
            "gdr3_zeropoint": np.where(bad, nan, zp)}


def fakemag_distance(fakemag, mag, fakemag_err) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distance and parallax of stars of pseudo-luminosity ``fakemag`` seen at magnitude ``mag``.

    ``dist = 1000 · 10**(0.2 · mag) / fakemag`` pc, ``parallax = fakemag / 10**(0.2 · mag)``
    mas, each error ``fakemag_err / fakemag`` times its value: the arithmetic of astroNN's
    ``fakemag_to_pc`` and ``fakemag_to_parallax``, equal to them bit for bit, without
    importing ``astroNN.gaia`` (which loads TensorFlow, ~4 s and ~700 MB resident).
    A non-positive or NaN ``fakemag``, or a NaN ``mag``, gives NaN where astroNN gives its
    magic number.

    Parameters
    ----------
    fakemag, mag, fakemag_err : array_like
        (B,) pseudo-luminosity, extinction-corrected apparent Ks magnitude, and the
        pseudo-luminosity's error.

    Returns
    -------
    tuple of ndarray
        ``(dist, dist_err, parallax, parallax_err)``, each (B,) float64.
    """
    fakemag = np.asarray(fakemag, dtype=float)
    mag = np.asarray(mag, dtype=float)
    impossible = (fakemag <= 0.0) | np.isnan(fakemag) | np.isnan(mag)
    with np.errstate(all="ignore"):  # the impossible stars divide by zero or NaN; they become NaN
        luminosity_scale = 10.0 ** (0.2 * mag)
        dist = 1000.0 * luminosity_scale / fakemag
        parallax = fakemag / luminosity_scale
        relative_err = np.asarray(fakemag_err, dtype=float) / fakemag
        dist_err = relative_err * dist
        parallax_err = relative_err * parallax
    return tuple(np.where(impossible, np.nan, value) for value in (dist, dist_err, parallax, parallax_err))


# -- values ----------------------------------------------------------------------------

def _as_float(value: Any) -> float:
    """A scalar as float; None, masked, empty or unparsable → NaN."""
    if value is None or value is np.ma.masked:
        return math.nan
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode(errors="replace")
    if isinstance(value, str) and not value.strip():
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _usable(name: str, value: float) -> bool:
    if name == "k_mag":
        return not bool(k_mag_missing(value))
    if name == "ebv":
        return not bool(ebv_missing(value))
    return math.isfinite(value)


@dataclass
class Photometry:
    """One star's photometry and where each value came from.

    Attributes
    ----------
    k_mag, ebv : float
        Values used (0 where missing).
    missing_k_mag, missing_ebv : bool
        The missing-value flags.
    plx, e_plx : float
        Gaia DR3 parallax and error, mas, as given (NaN when none was found).
    gdr3_zeropoint : float
        Per-star zero-point from the same source as ``plx``, or NaN (→ the median).
    sources : dict
        ``{"k_mag": "ref" | "catalog" | "header" | None, "ebv": ..., "plx": ...}``.
    """

    k_mag: float = 0.0
    ebv: float = 0.0
    missing_k_mag: bool = True
    missing_ebv: bool = True
    plx: float = math.nan
    e_plx: float = math.nan
    gdr3_zeropoint: float = math.nan
    sources: dict[str, str | None] = field(default_factory=lambda: {"k_mag": None, "ebv": None, "plx": None})

    @property
    def a_k_mag(self) -> float:
        """Ks-band extinction, 0.3517·E(B−V)."""
        return AK_PER_EBV * self.ebv


def star_photometry(spectrum, catalog: "SourceCatalog | None" = None) -> Photometry:
    """Gather one star's photometry from the reference, the catalog, then the header.

    Parameters
    ----------
    spectrum : Spectrum
        Uses ``meta["ref_photometry"]``, ``ids`` and ``meta["k_mag"]``.
    catalog : SourceCatalog, optional
    """
    meta = spectrum.meta or {}
    candidates: list[tuple[str, Mapping[str, Any]]] = []
    ref = meta.get("ref_photometry")
    if isinstance(ref, Mapping):
        candidates.append(("ref", ref))
    if catalog is not None:
        row = catalog.lookup(spectrum.ids or {})
        if row is not None:
            candidates.append(("catalog", row))
    if "k_mag" in meta:
        candidates.append(("header", {"k_mag": meta["k_mag"]}))

    phot = Photometry()
    for name in ("k_mag", "ebv"):
        for source, values in candidates:
            value = _as_float(values.get(name))
            if _usable(name, value):
                setattr(phot, name, value)
                setattr(phot, f"missing_{name}", False)
                phot.sources[name] = source
                break
    for source, values in candidates:
        plx, e_plx = _as_float(values.get("plx")), _as_float(values.get("e_plx"))
        if math.isfinite(plx) and e_plx > 0:
            phot.plx, phot.e_plx = plx, e_plx
            phot.gdr3_zeropoint = _as_float(values.get("gdr3_zeropoint"))
            phot.sources["plx"] = source
            break
    return phot


# -- the source catalog ----------------------------------------------------------------

def _norm_key(value: Any) -> int | str | None:
    """An identifier as int (numeric ids) or stripped str (APOGEE ids); None when blank."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode(errors="replace")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    text = str(value).strip()
    if not text:
        return None
    if text.lstrip("+-").isdigit():
        return int(text)
    return text


class _KeyIndex:
    """Sorted keys → row numbers, for one identifier column (memory-light for big catalogs)."""

    def __init__(self, column):
        keys, rows = [], []
        mask = np.ma.getmaskarray(column)
        for i, (value, masked) in enumerate(zip(np.asarray(column), mask)):
            key = None if masked else _norm_key(value)
            if key is not None:
                keys.append(key)
                rows.append(i)
        self.numeric = all(isinstance(k, int) for k in keys)
        if self.numeric:
            arr = np.array(keys, dtype=np.int64)
        else:
            arr = np.array([str(k) for k in keys], dtype=str)
        order = np.argsort(arr, kind="stable")  # stable: the first duplicate wins
        self.keys = arr[order]
        self.rows = np.asarray(rows, dtype=np.int64)[order]

    def find(self, value: Any) -> int | None:
        key = _norm_key(value)
        if key is None or len(self.keys) == 0:
            return None
        if self.numeric:
            if not isinstance(key, int):
                return None
            key = np.int64(key)
        else:
            key = str(key)
        i = int(np.searchsorted(self.keys, key, side="left"))
        if i < len(self.keys) and self.keys[i] == key:
            return int(self.rows[i])
        return None


class SourceCatalog:
    """Per-star Ks magnitude, E(B−V) and Gaia parallax, keyed by SDSS identifiers.

    Parameters
    ----------
    columns : dict
        Float arrays by value column name (any of ``k_mag``, ``ebv``, ``plx``, ``e_plx``,
        ``gdr3_zeropoint``), NaN where empty.
    keys : dict
        Identifier columns by key name (``sdss_id``, ``catalogid``, ``apogee_id``).
    source : str
        Where the catalog was read from, for messages.
    """

    def __init__(self, columns: Mapping[str, np.ndarray], keys: Mapping[str, Any], source: str = ""):
        if not keys:
            raise ValueError(f"source catalog {source}: no sdss_id, catalogid or apogee_id column")
        if not columns:
            raise ValueError(f"source catalog {source}: none of the columns {', '.join(VALUE_COLUMNS)}")
        self.columns = {k: np.asarray(v, dtype=float) for k, v in columns.items()}
        self.source = source
        self._index = {name: _KeyIndex(col) for name, col in keys.items()}

    @property
    def key_columns(self) -> list[str]:
        """The identifier columns the catalog can be matched on."""
        return list(self._index)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SourceCatalog":
        """Read a CSV, FITS or Parquet catalog (column names case-insensitive).

        Raises
        ------
        ValueError
            When the file has no identifier column or no value column, or is in no format
            astropy can tell or read; the message names the file.
        OSError
            When the file cannot be opened or read (its own subclass: FileNotFoundError…);
            the message names the file.
        """
        from astropy.io.registry import IORegistryError
        from astropy.table import Table  # only workers that read a catalog pay for astropy

        path = Path(path).expanduser()
        name = path.name.lower()
        if name.endswith((".csv", ".csv.gz", ".txt")):
            fmt = "ascii.csv"
        elif name.endswith((".parquet", ".pq")):
            fmt = "parquet"
        elif name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            fmt = "fits"
        else:
            fmt = None  # let astropy guess
        not_a_catalog = f"{path}: not a catalog file (use CSV, FITS or Parquet)"
        try:
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except (IORegistryError, UnicodeDecodeError):
            raise ValueError(not_a_catalog) from None
        except OSError as exc:
            if exc.errno is None:  # astropy's word on contents it cannot read (a .fits that is not FITS)
                raise ValueError(not_a_catalog) from None
            # still an OSError: a worker retries it (a network file system that comes back)
            raise type(exc)(f"{path}: cannot be read: {exc.strerror or exc}") from None
        except ValueError as exc:  # rows that do not fit the header, a broken Parquet file: its first line says where
            detail = str(exc).strip().splitlines()
            raise ValueError(f"{not_a_catalog}: {detail[0]}" if detail else not_a_catalog) from None
        lower = {c.lower(): c for c in table.colnames}
        keys = {}
        for key, aliases in _KEY_ALIASES.items():
            for alias in aliases:
                if alias in lower:
                    keys[key] = table[lower[alias]]
                    break
        columns = {}
        for name_ in VALUE_COLUMNS:
            if name_ in lower:
                column = table[lower[name_]]
                if column.dtype.kind in "biuf":
                    # Masked (empty) cells become NaN, i.e. "absent".
                    columns[name_] = np.ma.filled(np.ma.asarray(column).astype(float), np.nan)
                else:
                    # Text where numbers belong ("n/a", "--"): one bad cell must not make the
                    # whole catalog unreadable, so it is an absent value of its star only.
                    columns[name_] = np.array([_as_float(v) for v in column], dtype=float)
        return cls(columns, keys, source=str(path))

    def lookup(self, ids: Mapping[str, Any]) -> dict[str, float] | None:
        """The row matching a spectrum's ``ids`` (sdss_id, then catalogid, then apogee_id)."""
        for key in KEY_COLUMNS:
            if key in self._index and ids.get(key) is not None:
                row = self._index[key].find(ids[key])
                if row is not None:
                    return {name: float(col[row]) for name, col in self.columns.items()}
        return None
