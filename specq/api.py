"""specq from Python: :func:`predict`, :func:`results`, :func:`submit`, :func:`write_results`.

Each returns what the command line writes: an `astropy.table.Table` with the exported
columns, units and descriptions (:func:`workers.export.results_table`). The networks load
on the first :func:`predict` and stay warm in the process for the next calls.

``specq.predict`` takes what an astronomer has at hand: paths and folders, specutils
``Spectrum``/``SpectrumList`` objects, or ``(wavelength, flux, ivar)`` arrays with a dict
of their metadata. A spectrum specutils read from an SDSS file gives the numbers of that
file's path: the wavelength grid the file declares is rebuilt from specutils' float32
axis, and the photometry comes from the primary header it keeps. With a ``seed``, a
spectrum's Monte Carlo draws depend on its name (path, HDU, row), as for a file: an
in-memory spectrum is ``<input N>`` unless its ``meta`` gives ``path``, ``hdu`` and ``row``.

Spectra may also be named the SDSS way, with the names ``specq run --release --product``
takes (:mod:`tasks.sdss_names`): ``predict(release="dr19", product="specLite",
run2d="v6_1_3", fieldid=101077, mjd=59846, catalogid=27021597000000001)``, or a target
table (an astropy Table, a pandas DataFrame, or a CSV, FITS or Parquet file) with one
spectrum per row: ``predict(targets, release="dr19", product="specLite")``. Their paths
are relative to the data root (``data_root=``, else ``SPECQ_DATA_ROOT``: the archive's
folder or URL).

A mistake in what was asked (an unknown pipeline, a missing file, arrays that are not a
spectrum, an SDSS name that names no file, no weights) raises :class:`SpecqError`, one
line saying what to change.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["SpecqError", "predict", "results", "submit", "write_results"]

# Where the two spectrographs' spectra lie (vacuum Å): how an in-memory spectrum finds its pipeline.
_OPTICAL_MAX, _INFRARED_MIN = 12_000.0, 14_000.0


class SpecqError(ValueError):
    """What was asked of specq cannot be done as asked: the message says what to change."""


def _settings(**overrides):
    from workers.settings import load_settings

    try:
        return load_settings(**overrides)
    except ValueError as exc:
        raise SpecqError(str(exc)) from None


def _pipelines(pipeline: str | Sequence[str] | None, argument: str = "pipeline") -> list[str]:
    from workers import registry

    if pipeline is not None and not isinstance(pipeline, str):
        if isinstance(pipeline, Iterable) and not isinstance(pipeline, (bytes, Mapping)):
            pipeline = list(pipeline)  # a set, a generator, dict keys: names all the same
        if not isinstance(pipeline, list) or not all(isinstance(n, str) for n in pipeline):
            raise SpecqError(f"{argument}={pipeline!r}: give a pipeline's name, such as 'bossnet', or a list of names")
    try:
        return registry.parse(pipeline)
    except ValueError as exc:
        raise SpecqError(f"{argument}={pipeline!r}: {exc}") from None


# -- in-memory spectra ---------------------------------------------------------------
def _is_specutils(item) -> bool:
    return type(item).__module__.startswith("specutils")


def _loglinear(wavelength, npix: int):
    """The log10-linear grid (``CRVAL``/``CDELT``, as the MWM headers declare it) that
    ``wavelength`` (stored in float32) rounds from, or None."""
    import numpy as np

    from workers.readers.common import log_lambda_grid

    logs = np.log10(np.asarray(wavelength, dtype=np.float64))
    start = round(float(logs[0]), 6)
    step = round(float(logs[-1] - logs[0]) / max(npix - 1, 1), 10)
    if not step > 0:
        return None
    grid = log_lambda_grid("spectrum", "", start, step, npix)
    return grid if np.allclose(grid, wavelength, rtol=3e-7, atol=0) else None


def _specutils_rows(item, name: str) -> list:
    """The `workers.spectrum.Spectrum` objects of one specutils ``Spectrum`` (one per flux row)."""
    import numpy as np
    from astropy import units as u

    from workers.readers.mwm import header_meta
    from workers.spectrum import Spectrum

    meta = dict(item.meta or {})
    header = meta.get("header") or {}
    if not isinstance(header, Mapping):
        raise SpecqError(f"{name}: meta header must be a FITS header, not a {type(header).__name__}")
    wavelength = item.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    flux = np.atleast_2d(np.asarray(item.flux.value, dtype=np.float32))
    if item.uncertainty is None:
        raise SpecqError(f"{name}: the spectrum has no uncertainty (specq needs the inverse variance)")
    inverse_variance = _inverse_variance()
    uncertainty = item.uncertainty  # as stored when it is an inverse variance: a conversion would round
    if not isinstance(uncertainty, inverse_variance):
        uncertainty = uncertainty.represent_as(inverse_variance)
    ivar = np.atleast_2d(np.asarray(uncertainty.array, dtype=np.float32))
    mask = None if item.mask is None else np.atleast_2d(np.asarray(item.mask))
    datatype = str(meta.get("datatype", ""))
    instrument = str(meta.get("instrument") or "").lower() or _instrument(wavelength, name)
    if datatype in ("mwmStar", "mwmVisit"):
        # The file declares a log-linear grid (CRVAL, CDELT); specutils hands its float32 copy.
        grid = _loglinear(wavelength, wavelength.size)
        wavelength = grid if grid is not None else np.asarray(wavelength, dtype=np.float64)
    else:
        # spec-lite: 10**LOGLAM of the float32 LOGLAM column, as the file's readers compute it.
        loglam = np.log10(np.asarray(wavelength, dtype=np.float64)).astype(np.float32)
        wavelength = 10.0 ** loglam.astype(np.float64)
    common = {**header_meta(header), "format": datatype or "specutils"}
    try:
        snr = np.atleast_1d(np.asarray(meta.get("snr", np.nan), dtype=float))
    except (TypeError, ValueError):
        raise SpecqError(f"{name}: meta snr={meta['snr']!r} is not a number") from None
    out = []
    for row in range(flux.shape[0]):
        bits = None if mask is None else mask[min(row, mask.shape[0] - 1)].astype(np.int64)
        row_meta = {**common, "snr": float(snr[min(row, snr.size - 1)])}
        path, hdu, first = _place(meta, name)
        out.append(_spectrum(path, first + row, instrument, wavelength, flux[row], ivar[min(row, ivar.shape[0] - 1)],
                             bits, is_visit=datatype != "mwmStar", meta=row_meta, ids=_header_ids(header), hdu=hdu))
    return out


def _place(meta: Mapping[str, Any], name: str) -> tuple[str, int, int]:
    """(path, hdu, first row) an in-memory spectrum is known by: ``meta``'s ``path``, ``hdu`` and
    ``row`` where given (a seed's draws depend on them, as for a file), else ``name``, 0, 0."""
    path = str(meta.get("path") or name)
    hdu, row = (_whole(meta.get(key) or 0, f"{name}: meta {key}") for key in ("hdu", "row"))
    from workers.refs import MAX_INDEX

    if not (0 <= hdu <= MAX_INDEX and 0 <= row <= MAX_INDEX):
        raise SpecqError(f"{name}: meta hdu and row must be from 0 to {MAX_INDEX}, not {hdu} and {row}")
    return path, hdu, row


def _whole(value, what: str) -> int:
    """``value`` as an int: an integer, a float without a fraction, or a string of digits."""
    import numbers
    import re

    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise SpecqError(f"{what} must be a whole number, not {value!r}")


def _missing(value) -> bool:
    """A value that says "not known": None, NaN, a masked value (numpy's, astropy's), pandas' NA."""
    import math
    import numbers

    import numpy as np

    if value is None or value is np.ma.masked or type(value).__name__ == "NAType":
        return True
    return isinstance(value, numbers.Real) and math.isnan(value)


def _meta_ids(meta: dict, name: str) -> dict[str, Any]:
    """The ids ``meta`` gives (taken out of it), checked: a row keeps them as 64-bit integers
    (``apogee_id``: a string); a missing value (:func:`_missing`) is an id not known."""
    import numbers

    from workers.refs import ID_KEYS

    ids = {}
    for key in ID_KEYS:
        value = meta.pop(key, None)
        if _missing(value):
            continue
        if key == "apogee_id":
            if isinstance(value, bytes):  # a FITS string column read as bytes
                value = value.decode("ascii", "replace").strip()
            if not isinstance(value, str):
                raise SpecqError(f"{name}: meta apogee_id must be a string, not {value!r}")
            ids[key] = value
            continue
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and abs(value) >= 2**53:
            # beyond 2**53 a float is not the id it was written from (SDSS-V catalogids are ~2.7e16)
            raise SpecqError(f"{name}: meta {key}={value!r}: a float cannot hold this id exactly; give integers "
                             f"(a pandas Int64 column, where some are missing)")
        number = _whole(value, f"{name}: meta {key}")
        if not -2**63 <= number < 2**63:
            raise SpecqError(f"{name}: meta {key}={number} does not fit in 64 bits, as results keep ids")
        ids[key] = number
    return ids


def _meta_photometry(meta: dict, name: str) -> None:
    """``meta``'s photometry (``k_mag``, ``ebv`` …) as floats; a value that is not a number
    is refused (the pipelines would take it for a missing one)."""
    from workers.registry import message_extras

    for key in message_extras():
        if _missing(meta.get(key)):
            meta[key] = None  # not known, as a missing key
        else:
            try:
                meta[key] = float(meta[key])
            except (TypeError, ValueError):
                raise SpecqError(f"{name}: meta {key}={meta[key]!r} is not a number") from None


def _angstrom(wavelength, name: str):
    """``wavelength`` in Å: an astropy Quantity (or a Column with a unit) converted, else as given."""
    if getattr(wavelength, "unit", None) is None:
        return wavelength
    from astropy import units as u

    try:
        return u.Quantity(wavelength).to_value(u.AA, equivalencies=u.spectral())
    except (u.UnitsError, TypeError, ValueError):
        raise SpecqError(f"{name}: wavelengths in {wavelength.unit} cannot be given in Å") from None


def _inverse_variance():
    from astropy.nddata import InverseVariance

    return InverseVariance


def _header_ids(header: Mapping[str, Any]) -> dict[str, Any]:
    ids = {}
    for key, cards in (("sdss_id", ("SDSS_ID",)), ("catalogid", ("CAT_ID", "CATALOGID"))):
        for card in cards:
            value = header.get(card)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                ids[key] = value
                break
    return ids


def _instrument(wavelength, name: str) -> str:
    import numpy as np

    try:
        values = np.asarray(wavelength, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecqError(f"{name}: wavelength, flux and ivar must be numbers") from None
    values = values[np.isfinite(values)]
    if not values.size:
        raise SpecqError(f"{name}: the wavelengths hold no finite number")
    middle = float(np.median(values))
    if middle < _OPTICAL_MAX:
        return "boss"
    if middle > _INFRARED_MIN:
        return "apogee"
    raise SpecqError(f"{name}: wavelengths around {middle:.0f} Å are neither BOSS (optical) nor APOGEE (H band)")


def _spectrum(name: str, row: int, instrument: str, wavelength, flux, ivar, bitmask, *, is_visit: bool,
              meta: Mapping[str, Any], ids: Mapping[str, Any], hdu: int = 0):
    """A reader's `Spectrum` of arrays, checked as a reader checks a file's."""
    import numpy as np

    from workers.readers.common import check_wavelength
    from workers.spectrum import Spectrum, SpectrumError

    try:
        wavelength = np.asarray(wavelength, dtype=np.float64).ravel()
        flux = np.asarray(flux, dtype=np.float32).ravel()
        ivar = np.asarray(ivar, dtype=np.float32).ravel()
        bitmask = None if bitmask is None else np.asarray(bitmask).ravel()
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecqError(f"{name}: wavelength, flux and ivar must be numbers ({exc})") from None
    if bitmask is not None and bitmask.dtype.kind not in "iub":
        whole = bitmask.dtype.kind == "f" and bool(np.all(np.isfinite(bitmask) & (bitmask == np.round(bitmask))))
        if not whole:
            raise SpecqError(f"{name}: bitmask must hold whole numbers, not {bitmask.dtype}")
        bitmask = bitmask.astype(np.int64)
    if not flux.size or flux.shape != wavelength.shape or ivar.shape != flux.shape:
        raise SpecqError(f"{name}: wavelength, flux and ivar need one value per pixel each "
                         f"(got {wavelength.size}, {flux.size}, {ivar.size})")
    try:
        wavelength = check_wavelength(name, "", wavelength)
    except SpectrumError as exc:
        raise SpecqError(str(exc)) from None
    error = None
    if instrument == "apogee":  # the APOGEE pipelines take a 1-sigma error, as the mwm reader makes it
        with np.errstate(divide="ignore", invalid="ignore"):
            usable = np.isfinite(ivar) & (ivar > 0)
            error = np.where(usable, ivar, 1.0).astype(np.float32) ** -0.5
        error[~usable] = np.inf
    return Spectrum(path=name, hdu=hdu, row=row, instrument=instrument, wavelength=wavelength, flux=flux,
                    ivar=ivar, error=error, bitmask=bitmask,
                    is_visit=is_visit, ids=dict(ids), meta=dict(meta))


def _array_spectrum(item: tuple, name: str):
    """``(wavelength, flux, ivar)`` or ``(wavelength, flux, ivar, meta)`` as a `Spectrum`.

    ``meta`` may hold ``instrument`` (``"boss"``/``"apogee"``), ``is_visit``, ``bitmask``,
    ids (``sdss_id``, ``catalogid``, ``spectrum_pk``, ``apogee_id``), photometry
    (``k_mag``, ``ebv``, ``plx``, ``e_plx``) and the spectrum's ``path``, ``hdu``, ``row``.
    """
    if len(item) not in (3, 4):
        raise SpecqError(f"{name}: give (wavelength, flux, ivar) or (wavelength, flux, ivar, meta), "
                         f"not a tuple of {len(item)}")
    if len(item) == 4 and not isinstance(item[3], Mapping):
        raise SpecqError(f"{name}: meta must be a mapping (a dict), not a {type(item[3]).__name__}")
    meta = dict(item[3]) if len(item) == 4 else {}
    if meta.get("wavelength_unit") not in (None, "Angstrom", "AA"):
        raise SpecqError(f"{name}: wavelengths must be in Å (vacuum)")
    wavelength = _angstrom(item[0], name)
    instrument = str(meta.pop("instrument", "") or "").lower() or _instrument(wavelength, name)
    if instrument not in ("boss", "apogee"):
        raise SpecqError(f"{name}: instrument must be 'boss' or 'apogee', not {instrument!r}")
    ids = _meta_ids(meta, name)
    _meta_photometry(meta, name)
    is_visit = meta.pop("is_visit", instrument == "boss")
    _check_bool(is_visit, f"{name}: meta is_visit")
    path, hdu, row = _place(meta, name)
    for key in ("path", "hdu", "row"):
        meta.pop(key, None)
    return _spectrum(path, row, instrument, wavelength, item[1], item[2], meta.pop("bitmask", None),
                     is_visit=bool(is_visit), meta=meta, ids=ids, hdu=hdu)


def _memory_spectra(items: list) -> list:
    """Every in-memory spectrum of ``items``, as `Spectrum` objects named ``<input N>``."""
    out = []
    for i, item in enumerate(items):
        name = f"<input {i}>"
        if _is_specutils(item):
            members = list(item) if type(item).__name__ == "SpectrumList" else [item]
            for k, member in enumerate(members):
                for spectrum in _specutils_rows(member, name if len(members) == 1 else f"<input {i}.{k}>"):
                    out.append(spectrum)
        else:
            out.append(_array_spectrum(tuple(item), name))
    return out


def _path(item, call: str) -> str:
    """A path given to ``call``; an empty one is refused: ``''`` is the current folder to the path
    functions, so a blank name would run (or send) every spectrum under it."""
    path = os.fspath(item)
    if isinstance(path, bytes):
        raise SpecqError(f"{call}: {item!r}: give paths as text (str or pathlib.Path), not bytes")
    if not path:
        raise SpecqError(f"{call}: an empty path ('') names no spectrum file (the current folder is '.')")
    return path


def _is_table(value) -> bool:
    """An astropy Table or a pandas DataFrame: a target table (iterating one gives its rows or
    its column names, never spectra)."""
    return hasattr(value, "colnames") or type(value).__name__ == "DataFrame"


def _one_or_many(given, *single: type) -> list:
    """``given`` as a list of items: alone when it is one item (a path, one of ``single``, or
    what iterating would take apart: bytes, a mapping, a table), else its items."""
    if isinstance(given, (str, os.PathLike, bytes, Mapping, *single)) or _is_table(given):
        return [given]
    return list(given) if isinstance(given, Iterable) else [given]


def _refused(cannot: str, item, takes: str) -> SpecqError:
    """The error for an item that cannot be taken ("cannot predict from" …); a table is told where it goes."""
    hint = " (a target table goes with release= and product=)" if _is_table(item) else ""
    return SpecqError(f"{cannot} a {type(item).__name__}{hint}: give {takes}")


def _split_inputs(spectra) -> tuple[list, list]:
    """(paths, in-memory spectra) of what :func:`predict` was given."""
    items = [spectra] if _is_specutils(spectra) else _one_or_many(spectra, tuple)
    paths, memory = [], []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            paths.append(_path(item, "predict"))
        elif _is_specutils(item) or isinstance(item, (tuple, list)):
            memory.append(item)
        else:
            raise _refused("cannot predict from", item, "paths, folders, specutils Spectrum/SpectrumList objects or "
                                                        "(wavelength, flux, ivar[, meta]) tuples")
    return paths, memory


# -- SDSS names -------------------------------------------------------------------------
def _sdss_names(call: str, spectra, release: str | None, product: str | None, table,
                keywords: Mapping[str, Any]) -> dict | None:
    """The SDSS-name arguments of ``call`` as :func:`tasks.producer.named_plan` takes them,
    or None when none was given. ``spectra``, when given beside ``release``, is the table."""
    if release is None and product is None and table is None:
        if keywords:
            raise SpecqError(f"{call}: unknown argument {', '.join(sorted(keywords))} (a product's keywords, "
                             f"such as run2d=, go with release= and product=)")
        return None
    if not release or not product:
        missing = "release= (e.g. 'dr19')" if not release else "product= (e.g. 'specLite')"
        raise SpecqError(f"{call}: spectra named the SDSS way need {missing}")
    for key, value in (("release", release), ("product", product)):
        if not isinstance(value, str):
            raise SpecqError(f"{call}: {key}={value!r}: give its name as a string, such as "
                             f"{'dr19' if key == 'release' else 'specLite'!r}")
    if spectra is not None and table is not None:
        raise SpecqError(f"{call}: give the target table once: as the first argument or as table=")
    table = spectra if table is None else table
    if table is None and not keywords:
        raise SpecqError(f"{call}: name the {product} spectra by their keywords (e.g. mjd=59846) or by a table")
    return {"release": release, "product": product, "table": table, **keywords}


# -- the three calls -------------------------------------------------------------------
def predict(spectra=None, pipeline: str | None = None, *, release: str | None = None, product: str | None = None,
            table=None, draws: int | None = None, seed: int | None = None, weights: str | os.PathLike | None = None,
            demo_weights: bool = False, device: str | None = None, precision: str | None = None,
            data_root: str | os.PathLike | None = None, **keywords):
    """Run a pipeline on spectra in this process and return the results.

    Parameters
    ----------
    spectra : path, specutils Spectrum/SpectrumList, tuple, or a list of them
        Spectrum files (spec-lite, mwmVisit, mwmStar, apStar, LAMOST DR7 and DR8, Gaia
        DR3 RVS and XP tables; gzipped too) and folders holding them; specutils objects; ``(wavelength, flux, ivar)`` arrays (vacuum Å)
        with an optional fourth item, a dict of metadata (``instrument``, ``is_visit``,
        ``bitmask``, ids such as ``sdss_id``, photometry such as ``k_mag`` and ``ebv``).
        A wavelength given as an astropy ``Quantity`` is converted to Å.
        With ``release`` and ``product``: the target table (as ``table``).
    pipeline : str, optional
        ``"bossnet"``, ``"astronn_dist"`` …; None: each spectrum goes to the pipeline of its
        instrument, as ``specq run`` does (for an SDSS name: every pipeline that reads the
        product).
    release, product : str, optional
        Spectra named the SDSS way, as ``specq run --release dr19 --product specLite``:
        a data release and one of ``specLite``, ``mwmStar``, ``mwmVisit``, ``apStar``.
        The files are read from ``data_root``, a folder or a URL.
    table : path, astropy Table or pandas DataFrame, optional
        With ``release`` and ``product``: one spectrum per row, named by the columns
        called like the product's keywords; ``k_mag``, ``ebv``, ``plx``, ``e_plx`` columns
        travel as the star's photometry, id columns (``sdss_id``, ``catalogid`` …) as ids.
    **keywords
        With ``release`` and ``product``: the product's keywords (``run2d="v6_1_3",
        fieldid=101077, mjd=59846, catalogid=…``), and values for columns a table lacks.
    draws, seed : int, optional
        Monte Carlo draws (default: the pipeline's) and their seed (default: random).
    weights : path, optional
        The network weights (default: those installed with ``specq weights install``).
    demo_weights : bool
        Use seeded demo weights when none are installed (not science).
    device : str, optional
        ``cpu``, ``cuda`` or ``cuda:N`` (default: ``SPECQ_DEVICE``, else CUDA when available).
    precision : str, optional
        ``float32`` (default), or ``tf32``/``bf16`` where the pipeline offers them.
    data_root : path or URL, optional
        What SDSS names are relative to: the archive's root (the folder that holds
        ``dr19/``, or ``https://data.sdss.org/sas``). Default ``SPECQ_DATA_ROOT``.

    Returns
    -------
    astropy.table.Table
        One row per spectrum, the columns of ``specq run``'s output (flagged rows for
        spectra that could not be processed, with their ``error``). Spectra of several
        pipelines give one table of their rows stacked, with a leading ``pipeline`` column.

    Raises
    ------
    SpecqError
        An unknown pipeline, a path that names no spectrum file, a spectrum that is not
        one, an SDSS name that names no file (an unknown release or product, a keyword
        missing), missing weights, or an option the pipeline refuses.
    """
    from pathlib import Path

    from specq.checks import UserMistake, check_device
    from tasks.producer import InputError, named_plan, plan_local
    from workers import engine, registry, remote
    from workers.export import results_table
    from workers.refs import SpectrumRef
    from workers.weights.formats import WeightsError

    for key, value, takes in (("weights", weights, "a file or a folder"),
                              ("data_root", data_root, "a folder or a URL")):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise SpecqError(f"predict: {key}={value!r}: give {takes}")
    if weights is not None and not os.fspath(weights):  # '' would quietly mean the installed (or demo) weights
        raise SpecqError("predict: weights='': give the weights' file or folder, or leave weights out")
    settings = _settings(device=device, demo_weights=demo_weights or None,
                         data_root=None if data_root is None else os.fspath(data_root))
    try:
        if settings.device is not None:  # "" too: not a device
            check_device(settings.device, "device" if device is not None else "SPECQ_DEVICE")
    except UserMistake as exc:
        raise SpecqError(str(exc)) from None
    names = _pipelines(pipeline)
    named = _sdss_names("predict", spectra, release, product, table, keywords)
    paths, memory = _split_inputs([] if named or spectra is None else spectra)
    if not paths and not memory and not named:
        raise SpecqError("predict: no spectra given")
    root = remote.data_root(settings)
    try:
        if named:  # only the pipelines that read the product, as `specq run`
            refs, _ = named_plan(names, **named)
            names = list(refs)
        elif paths:  # files named here are local, also under a URL root
            refs, _ = plan_local(paths, names, root if isinstance(root, Path) else Path.cwd(), settings.fits_backend)
        else:
            refs = {p: [] for p in names}
    except ValueError as exc:  # InputError (every reason, one per line), or an SDSS name naming nothing
        raise SpecqError(str(exc).replace("\n", "; ")) from None
    in_memory = {p: [] for p in names}
    for spectrum in _memory_spectra(memory):
        chosen = [p for p in names if registry.get(p).instrument == spectrum.instrument]
        if pipeline is not None and not chosen:
            raise SpecqError(f"{spectrum.path}: a {spectrum.instrument.upper()} spectrum; "
                             f"{', '.join(names)} take{'s' if len(names) == 1 else ''} other spectra")
        for p in chosen:
            in_memory[p].append(spectrum)
    todo = [p for p in names if refs[p] or in_memory[p]]
    if not todo:
        raise SpecqError(f"predict: the input holds no spectrum for {', '.join(names)}")
    tables = {}
    for name in todo:
        try:
            # One warm model per process; draws, seed and precision are this call's (as a message's).
            model = engine.get_pipeline(name, settings, weights=weights)
            options = model.options(draws=draws, seed=seed, precision=precision)
        except (WeightsError, ValueError, TypeError, OSError) as exc:
            raise SpecqError(f"{name}: {exc}".splitlines()[0]) from None
        rows = engine.process(model, refs[name], root, backend=settings.fits_backend, options=options,
                              last_attempt=True)  # nothing retries in-process: a file that fails is its row
        jobs = [engine.Job(SpectrumRef(s.path, s.hdu, s.row, local_file=s.path), s) for s in in_memory[name]]
        size = model.batch_size or 8
        for start in range(0, len(jobs), size):
            rows += engine.run_jobs(model, jobs[start:start + size], options=options)
        tables[name] = results_table(model.schema, rows)
    if len(tables) == 1:
        return next(iter(tables.values()))
    return _stacked(tables)


def _stacked(tables: Mapping[str, Any]):
    """Several pipelines' tables as one: their rows stacked, a ``pipeline`` column first."""
    import warnings

    from astropy.table import Column, vstack
    from astropy.utils.metadata import MergeConflictWarning

    parts = []
    for name, table in tables.items():
        table = table.copy()
        table.add_column(Column([name] * len(table), name="pipeline",
                                description="The pipeline that made the row"), index=0)
        parts.append(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeConflictWarning)  # each part's header cards differ
        stacked = vstack(parts, join_type="outer", metadata_conflicts="silent")
    stacked.meta = {"specq_pipelines": list(tables)}
    return stacked


def results(pipeline: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
            good: bool | None = None, model: str | None = None, published_only: bool = False,
            all_columns: bool = False, database_url: str | None = None):
    """A pipeline's rows in the result store, as ``specq results export`` writes them.

    Parameters
    ----------
    pipeline : str
    since, until : datetime, date or str, optional
        Rows written at or after ``since`` and before ``until``: a datetime, a date, or an
        ISO date or time such as ``"2025-03-14"`` or ``"2025-03-14T22:00"`` (naive: UTC).
    good : bool, optional
        True: only rows without ``flag_bad``; False: only those with it.
    model : str, optional
        Only rows of the weights whose sha256 starts with this (hex digits; spaces and case
        do not matter), or ``"unloaded"``.
    published_only : bool
        Leave out rows made with demo weights.
    all_columns : bool
        Add the provenance columns.
    database_url : str, optional
        Default ``SPECQ_DATABASE_URL``, else the local SQLite store.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    SpecqError
        An unknown pipeline, a time that is not one, ``until`` not after ``since``, a
        model that is not hex digits, a filter of the wrong type, or a database that does
        not exist, cannot be opened or holds other tables but no specq results.
    """
    import sqlalchemy as sa

    from specq.checks import check_period, demo_store_hint, missing_sqlite_store, model_prefix, one_line
    from workers.settings import SettingsError
    from workers.store import ResultStore
    from workers.store_check import redact_url

    name = _pipelines(pipeline)
    if len(name) != 1:
        raise SpecqError(f"results: one pipeline at a time, not {pipeline!r}")
    since, until = _moment(since, "since"), _moment(until, "until")
    if good is not None:
        _check_bool(good, "results: good")
    _check_bool(published_only, "results: published_only")
    _check_bool(all_columns, "results: all_columns")
    if model is not None and not isinstance(model, str):
        raise SpecqError(f"results: model={model!r}: give the start of the weights' sha256, as a string")
    # the rules of ``specq results export --since/--until/--model``
    try:
        check_period(since, until, "since=", "until=")
    except ValueError as exc:
        raise SpecqError(f"results: {exc}") from None
    try:
        model = None if model is None else model_prefix(model)
    except ValueError as exc:
        raise SpecqError(f"results: model={exc}") from None
    if database_url is not None and not isinstance(database_url, str):
        raise SpecqError(f"results: database_url={database_url!r}: give a URL, such as 'sqlite:///results.sqlite'")
    settings = None if database_url else _settings()  # a URL given needs no settings (nor their mistakes)
    url = database_url or settings.database
    sqlite_file = missing_sqlite_store(url)
    if sqlite_file:
        hint = "" if settings is None else demo_store_hint(settings, "database_url")
        raise SpecqError(f"results: no result database at {sqlite_file} (database_url, SPECQ_DATABASE_URL){hint}")
    shown = redact_url(url)
    try:
        store = ResultStore(url)
        # Reading makes the tables: another application's database would give an empty table.
        present = set(sa.inspect(store.engine).get_table_names())
        if present and not present & {t.name for t in store.tables.values()}:
            raise SpecqError(f"results: {shown} holds tables, none of them specq's: not its result database "
                             f"(database_url, SPECQ_DATABASE_URL), or one where no worker has written yet")
        return store.table(name[0], all_columns=all_columns, since=since, until=until,
                           bad=None if good is None else not good, model=model, published_only=published_only)
    except SettingsError as exc:  # a database specq cannot use: no such dialect, no driver
        raise SpecqError(f"results: {exc}") from None
    except (ImportError, sa.exc.ArgumentError, sa.exc.DBAPIError) as exc:  # DBAPIError: also "not a database"
        raise SpecqError(f"result store {shown}: {one_line(exc)}") from None


def write_results(table, path, *, overwrite: bool = True, gzip: bool = False):
    """Write a table of :func:`results` or :func:`predict` as ``specq results export`` does.

    ``.fits`` (``.fits.gz``: gzipped) is the SDSS summary-file layout, its text cards and
    values made ASCII as FITS requires; ``.csv`` and ``.parquet`` hold the same columns.

    Parameters
    ----------
    table : astropy.table.Table
        One pipeline's rows; a table of several (``predict`` without a pipeline named) goes
        to CSV or Parquet only.
    path : str or os.PathLike
    overwrite : bool
        Replace a file already there.
    gzip : bool
        Write a FITS file gzipped, ``.gz`` added to its name.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    SpecqError
        Another extension, or a table of several pipelines for FITS.
    """
    from astropy.table import Table

    from workers.export import output_format, write_results as write

    # checked here: "no" is a true string (overwrite="no" would replace the file), and another
    # object fails deep in the writer with a message about its internals
    _check_bool(overwrite, "write_results: overwrite")
    _check_bool(gzip, "write_results: gzip")
    if not isinstance(table, Table):
        raise SpecqError(f"write_results: cannot write a {type(table).__name__}: give the astropy Table of "
                         f"specq.predict or specq.results")
    if not isinstance(path, (str, os.PathLike)):
        raise SpecqError(f"write_results: path={path!r}: give a file name (str or pathlib.Path)")
    try:
        _, kind = output_format(path, gzip)
    except ValueError as exc:
        raise SpecqError(f"write_results: {exc}") from None
    if kind == "fits" and "specq_pipeline" not in getattr(table, "meta", {}):
        # the summary layout is one pipeline's: its header cards, its columns
        raise SpecqError(f"write_results: {path}: FITS takes one pipeline's table (from results, or predict "
                         f"with a pipeline named); write .csv or .parquet, or one table per pipeline")
    return write(table, path, overwrite=overwrite, gzip=gzip)


def _check_bool(value, what: str) -> None:
    """Refuse anything but True or False (or 1 and 0) for ``what`` (a string such as "no" is true)."""
    import numbers

    import numpy as np

    if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, numbers.Integral) and value in (0, 1)):
        raise SpecqError(f"{what} must be True or False, not {value!r}")


def _moment(value, name: str) -> dt.datetime | None:
    """A ``since``/``until`` value as a datetime (a naive one is UTC, as the store takes it)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    if isinstance(value, str):
        from specq.checks import utc_time

        try:
            return utc_time(value)
        except ValueError as exc:
            raise SpecqError(f"results: {name}={exc}") from None
    raise SpecqError(f"results: {name} takes a datetime, a date or an ISO string, not a {type(value).__name__}")


def submit(items: Iterable | None = None, pipelines: str | Sequence[str] | None = None, *,
           release: str | None = None, product: str | None = None, table=None, **kwargs):
    """Enqueue spectra for the workers, as ``specq enqueue`` (:func:`tasks.producer.submit`).

    Parameters
    ----------
    items : iterable, optional
        Paths, folders and spectrum references. With ``release`` and ``product``: the
        target table (as ``table``).
    pipelines : str or sequence, optional
        None: every pipeline that takes each spectrum (for an SDSS name: every pipeline
        that reads the product).
    release, product, table
        Spectra named the SDSS way, as in :func:`predict`.
    **kwargs
        The product's keywords, and :func:`tasks.producer.submit`'s options
        (``chunk_size``, ``options``, ``bulk`` …).

    Returns
    -------
    tasks.producer.Submission
        Task ids and references by pipeline, and files skipped with why.

    Raises
    ------
    SpecqError
        A path names nothing a worker may read, an SDSS name names no file, or an option
        is wrong; nothing was sent. A broker that cannot be reached: what was not sent
        stays in the ledger of what was sent (``specq status``, ``specq reconcile``).
    """
    import inspect

    import sqlalchemy as sa

    from specq.checks import one_line
    from tasks.brokers import broker_errors, describe_error, not_sent_note
    from tasks.producer import submit as send

    names = _pipelines(pipelines, "pipelines")
    arguments = set(inspect.signature(send).parameters) - {"items", "pipelines", "keywords"}
    keywords = {k: v for k, v in kwargs.items() if k not in arguments}
    named = _sdss_names("submit", items, release, product, table, keywords)
    kwargs = _send_arguments(kwargs, names, named=pipelines is not None)
    given = () if named else _items(items)
    try:
        return send(given, None if pipelines is None else names, **{**kwargs, **(named or {})})
    except ValueError as exc:  # InputError too: every reason, one per line
        raise SpecqError(str(exc).replace("\n", "; ")) from None
    except sa.exc.DBAPIError as exc:  # the ledger of what was sent lies in the result database
        raise SpecqError(f"submit: the result database: {one_line(exc)} (SPECQ_DATABASE_URL)") from None
    except broker_errors() as exc:
        settings = (kwargs.get("settings") or getattr(kwargs.get("celery_app"), "specq_settings", None)
                    or _settings())
        raise SpecqError(f"submit: {describe_error(exc, settings)}; {not_sent_note('submit it')}") from None


def _items(items) -> list:
    """What :func:`submit` sends: one path, reference or dict alone, or each item of ``items``."""
    from workers.refs import SpectrumRef

    if items is None:
        raise SpecqError("submit: no spectra given (paths, folders, or release=, product= and keywords)")
    given = _one_or_many(items, SpectrumRef)  # empty: an empty submission, as specq enqueue sends nothing
    for item in given:
        if not isinstance(item, (str, os.PathLike, Mapping, SpectrumRef)):
            raise _refused("submit: cannot send", item, "paths, folders, spectrum references (SpectrumRef or "
                                                        "dict), or release=, product= and keywords")
        if isinstance(item, (str, os.PathLike)):
            _path(item, "submit")  # '' would send every spectrum under the data root
    return given


def _send_arguments(kwargs: Mapping[str, Any], names: Sequence[str], named: bool = True) -> dict[str, Any]:
    """:func:`submit`'s options for :func:`tasks.producer.submit`, checked; the message options
    as every pipeline of ``names`` takes them (a worker would set aside what it refuses).
    ``named``: the caller named ``names`` (else they are every pipeline)."""
    from workers.pipeline import MESSAGE_OPTIONS, message_options
    from workers.settings import Settings

    out = dict(kwargs)
    if out.get("chunk_size") is not None:
        out["chunk_size"] = _whole(out["chunk_size"], "submit: chunk_size")
        if out["chunk_size"] < 1:
            raise SpecqError(f"submit: chunk_size must be at least 1, not {kwargs['chunk_size']!r}")
    for key in ("bulk", "wait_unreadable"):
        if key in out:
            _check_bool(out[key], f"submit: {key}")
    if out.get("progress") is not None and not callable(out["progress"]):
        raise SpecqError(f"submit: progress={out['progress']!r}: give a function, such as a progress bar's update")
    if out.get("settings") is not None and not isinstance(out["settings"], Settings):
        raise SpecqError(f"submit: settings={out['settings']!r}: give workers.settings.Settings (load_settings())")
    options = out.get("options")
    if options is None:
        return out
    if not isinstance(options, Mapping):
        raise SpecqError(f"submit: options={options!r}: give a dict of draws, seed and precision")
    unknown = sorted(map(str, set(options) - set(MESSAGE_OPTIONS)))
    if unknown:
        raise SpecqError(f"submit: unknown option(s) {', '.join(unknown)} in options; give "
                         f"{', '.join(MESSAGE_OPTIONS[:-1])} or {MESSAGE_OPTIONS[-1]}")
    try:
        checked = message_options(names, **options)
    except (TypeError, ValueError) as exc:
        # With no pipeline named, any pipeline may get the spectra.
        hint = "" if named else " (name the pipelines, pipelines=..., to send them to those only)"
        raise SpecqError(f"submit: options: {exc}{hint}") from None
    out["options"] = {key: getattr(checked, key) for key, value in options.items() if value is not None}
    return out
