"""Spectra named the SDSS way: a data release, a product and its keywords → spectrum references.

``specq enqueue --release dr19 --product specLite run2d=v6_1_3 fieldid=101077 mjd=59846
catalogid=27021597000000001`` names one spectrum; ``--table targets.csv`` (or .fits,
.parquet) names one per row, from the columns named like the product's keywords. Columns
named like the photometry keys (``k_mag``, ``ebv``, ``plx``, ``e_plx``) travel with the
reference as that star's photometry, id columns (``sdss_id``, ``catalogid`` …) as its ids.

The paths come from the survey's own path library, sdss-access (``pip install
'specq[sdss]'``), imported here only: workers never need it. They are relative to the
archive's root (the folder or URL that holds ``dr19/``, e.g. ``https://data.sdss.org/sas``),
which is then the data root.

sdss-access writes its directory variables into ``os.environ``, and two releases in one
process would build each other's paths. :class:`Release` keeps each release's variables to
itself: they are set only while it builds a path, under a lock, and the process's
environment is put back as it was.
"""
from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import posixpath
import tempfile
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from workers.refs import ID_KEYS, RefError, SpectrumRef
from workers.registry import message_extras

__all__ = ["PRODUCTS", "Release", "SdssNameError", "named_refs", "parse_keywords", "read_targets"]

# The products whose files specq reads, and the instruments their spectra are for
# (mwmVisit: BOSS visits only; APOGEE visits are no pipeline's input).
PRODUCTS = {"specLite": ("boss",), "mwmStar": ("boss", "apogee"), "mwmVisit": ("boss",), "apStar": ("apogee",)}
_LOCK = threading.Lock()
_RELEASES: dict[str, "Release"] = {}


class SdssNameError(ValueError):
    """A release, product, keyword or table that names no spectrum (the message says which)."""


@contextmanager
def _environment(values: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run the block with ``values`` set in os.environ, and the environment restored after it."""
    saved = dict(os.environ)
    try:
        if values is not None:
            os.environ.update(values)
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


_ACCESS: dict = {}  # sdss-access's Path class, and what importing it set in the environment


def _changed(before: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if before.get(k) != v}


@functools.cache
def _archive_root() -> str:
    """SAS_BASE_DIR while sdss-access is imported and builds a path: what comes before the relative path.

    An empty folder of this process's own, removed when it exits: sdss-access makes its root
    when missing (at the root of the disk, or ~/sas: a user may not be allowed to, and two
    processes starting together race to), and looks in it for compressed copies of the file
    it names (in a shared folder, what others left there would change the name).
    """
    root = tempfile.mkdtemp(prefix="specq-sdss-names-")
    atexit.register(_remove_empty, root)
    return posixpath.normpath(root)


def _remove_empty(folder: str) -> None:
    with suppress(OSError):
        os.rmdir(folder)


def _sdss_access():
    """sdss-access's Path class and the variables its import set (call with ``_LOCK`` held)."""
    if not _ACCESS:
        with _environment({"SAS_BASE_DIR": _archive_root()}):
            before = dict(os.environ)
            # Its import logs at DEBUG through a logger of its own: not on a user's terminal.
            disabled = logging.root.manager.disable
            logging.disable(logging.DEBUG)
            try:
                from sdss_access.path import Path as AccessPath
            except ImportError:
                raise SdssNameError("SDSS names need sdss-access: pip install 'specq[sdss]'") from None
            finally:
                logging.disable(disabled)
            for name in ("sdss_access", "tree"):
                logging.getLogger(name).setLevel(logging.WARNING)
            _ACCESS.update(path=AccessPath, env=_changed(before))
    return _ACCESS["path"], _ACCESS["env"]


class Release:
    """One data release's path templates, isolated from every other release's.

    Parameters
    ----------
    name : str
        ``dr19``, ``dr17`` … (any case).

    Raises
    ------
    SdssNameError
        sdss-access is not installed, or knows no such release.
    """

    def __init__(self, name: str):
        self.name = name.strip().lower()
        with _LOCK:
            access_path, import_env = _sdss_access()
            with _environment(import_env):
                known = {r.lower() for r in access_path.get_available_releases()}
            if self.name not in known:
                raise SdssNameError(f"unknown release {name!r}: sdss-access knows {', '.join(sorted(known))}")
            with _environment({**import_env, "SAS_BASE_DIR": _archive_root()}):
                before = dict(os.environ)
                self._access = access_path(release=self.name)
                # What sdss-access set for this release: set again whenever it builds a path.
                self._env = {**import_env, "SAS_BASE_DIR": _archive_root(), **_changed(before)}
                self._templates = dict(self._access.templates)

    def keywords(self, product: str) -> tuple[str, ...]:
        """The keywords ``product``'s path needs in this release, in the template's order."""
        self._check_product(product)
        template = self._templates[product]
        with _LOCK:
            self._access.templates = self._templates  # another release may have replanted the shared tree
            keys = [k.split(":")[0] for k in self._access.lookup_keys(product)]
        return tuple(sorted(set(keys), key=template.find))

    def _check_product(self, product: str) -> None:
        if product not in PRODUCTS:
            raise SdssNameError(f"unknown product {product!r}: specq reads {', '.join(PRODUCTS)}")
        if product not in self._templates:
            raise SdssNameError(f"release {self.name} has no {product} product")

    def location(self, product: str, **keywords) -> str:
        """The path of one file relative to the archive's root.

        Raises
        ------
        SdssNameError
            An unknown product, a keyword missing or unknown, or a value that is not a
            plain name (a path separator, ``..``, empty).
        """
        needed = self.keywords(product)
        missing = [k for k in needed if k not in keywords or keywords[k] in (None, "")]
        if missing:
            raise SdssNameError(f"{product} ({self.name}) needs {', '.join(needed)}: missing {', '.join(missing)}")
        unknown = sorted(set(keywords) - set(needed))
        if unknown:
            raise SdssNameError(f"{product} ({self.name}) takes {', '.join(needed)}, not {', '.join(unknown)}")
        values = {k: _plain(k, keywords[k]) for k in needed}
        with _LOCK, _environment(self._env):
            self._access.templates = self._templates
            full = self._access.full(product, **values)
        full = posixpath.normpath(full)
        root = _archive_root()
        if not full.startswith(root + "/"):
            raise SdssNameError(f"{product} ({self.name}): sdss-access gave a path outside the archive ({full})")
        return full[len(root) + 1:]


def _plain(key: str, value) -> str:
    """A keyword's value as text; SdssNameError for one that could change the path's shape."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar, as a table's cell gives it
    if not isinstance(value, (str, int, float)):
        raise SdssNameError(f"{key}={value!r}: give one value per keyword (a table names many spectra)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise SdssNameError(f"{key}={value!r} is not a plain name")
    return text


def release(name: str) -> Release:
    """The :class:`Release` of ``name``, built once per process."""
    key = name.strip().lower()
    if key not in _RELEASES:
        _RELEASES[key] = Release(name)
    return _RELEASES[key]


def parse_keywords(tokens: Iterable[str]) -> dict[str, str]:
    """``["run2d=v6_1_3", "mjd=59846"]`` → ``{"run2d": "v6_1_3", "mjd": "59846"}``."""
    out: dict[str, str] = {}
    for token in tokens:
        key, sep, value = str(token).partition("=")
        if not sep or not key.strip():
            raise SdssNameError(f"{token!r}: give a product's keywords as name=value (e.g. mjd=59846)")
        out[key.strip().lower()] = value.strip()
    return out


def read_targets(table) -> list[dict]:
    """The rows of a target table as dicts with lower-case column names.

    Parameters
    ----------
    table : path-like, astropy Table or pandas DataFrame
        A CSV, FITS or Parquet file, or a table in memory.

    Returns
    -------
    list of dict
        One per row; masked and NaN cells are left out of their row.
    """
    from astropy.table import Table

    if isinstance(table, Table):
        return _table_rows(table)
    if type(table).__module__.split(".")[0] == "pandas" and hasattr(table, "columns"):
        return _table_rows(Table.from_pandas(table))
    if not isinstance(table, (str, os.PathLike)):
        raise SdssNameError(f"a target table is a path (CSV, FITS, Parquet), an astropy Table or a pandas "
                            f"DataFrame, not a {type(table).__name__}")
    path = Path(table)
    formats = {".csv": "ascii.csv", ".fits": "fits", ".fit": "fits", ".parquet": "parquet"}
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise SdssNameError(f"--table {path}: use a .csv, .fits or .parquet table")
    try:
        return _table_rows(Table.read(path, format=fmt))
    except FileNotFoundError:
        raise SdssNameError(f"--table {path}: no such file") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SdssNameError(f"--table {path}: not a readable {fmt} table ({exc})") from None


def _table_name(table) -> str:
    """How messages name a target table: ``--table PATH`` for a file, ``table`` for one in memory."""
    return f"--table {table}" if isinstance(table, (str, os.PathLike)) else "table"


def _table_rows(table) -> list[dict]:
    rows = []
    names = [(name, name.lower()) for name in table.colnames]
    for row in table:
        out = {}
        for name, lower in names:
            value = row[name]
            if value is None or getattr(value, "mask", False) is True or value is _masked():
                continue
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            out[lower] = value
        rows.append(out)
    return rows


def _masked():
    import numpy as np

    return np.ma.masked


def _ids(values: Mapping) -> dict:
    ids = {}
    for key in ID_KEYS:
        if key in values:
            value = values[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str) and value.lstrip("-").isdigit() and key != "apogee_id":
                value = int(value)
            ids[key] = value
    return ids


def _photometry(values: Mapping, where: str) -> dict:
    out = {}
    for key in message_extras():
        if key in values:
            try:
                number = float(values[key])
            except (TypeError, ValueError):
                raise SdssNameError(f"{where}: {key}={values[key]!r} is not a number") from None
            if math.isfinite(number):
                out[key] = number
    return out


def named_refs(release_name: str, product: str, keywords: Mapping | None = None,
               table: str | os.PathLike | None = None) -> list[SpectrumRef]:
    """File references for the spectra a release, a product and keywords (or a table) name.

    Parameters
    ----------
    release_name : str
        ``dr19`` …
    product : str
        One of :data:`PRODUCTS`.
    keywords : mapping, optional
        The product's keywords; with ``table``, values for the columns it lacks.
    table : path-like, astropy Table or pandas DataFrame, optional
        A target table (see :func:`read_targets`): one reference per row.

    Returns
    -------
    list of SpectrumRef
        File-level (the worker lists the file's spectra), with the ids and photometry
        the keywords or the row hold.

    Raises
    ------
    SdssNameError
        An unknown release or product, a missing keyword (naming it and, for a table,
        the row), a value that is not a plain name, an unreadable table.
    """
    rel = release(release_name)
    given = {str(k).lower(): v for k, v in (keywords or {}).items()}
    rows = read_targets(table) if table is not None else [{}]
    if not rows:
        raise SdssNameError(f"{_table_name(table)}: no rows")
    needed = rel.keywords(product)
    extra = sorted(set(given) - set(needed) - set(message_extras()) - set(ID_KEYS))
    if extra:
        raise SdssNameError(f"{product} ({rel.name}) takes {', '.join(needed)} (and ids, photometry), "
                            f"not {', '.join(extra)}")
    refs = []
    for number, row in enumerate(rows, start=1):
        where = f"{_table_name(table)} row {number}" if table is not None else product
        values = {**given, **row}
        try:
            path = rel.location(product, **{k: values[k] for k in needed if k in values})
            refs.append(SpectrumRef(path, ids=_ids(values), photometry=_photometry(values, where)))
        except SdssNameError as exc:
            raise SdssNameError(f"{where}: {exc}" if table is not None else str(exc)) from None
        except RefError as exc:
            raise SdssNameError(f"{where}: {exc}") from None
    return refs


def pipelines_for(product: str, pipelines: Iterable[str]) -> tuple[list[str], list[str]]:
    """Which of ``pipelines`` read ``product``'s spectra, and a note for each left out."""
    from workers import registry

    if product not in PRODUCTS:
        raise SdssNameError(f"unknown product {product!r}: specq reads {', '.join(PRODUCTS)}")
    kept, notes = [], []
    for name in pipelines:
        instrument = registry.get(name).instrument
        if instrument in PRODUCTS[product]:
            kept.append(name)
        else:
            notes.append(f"{name}: {product} holds no {instrument.upper()} spectra")
    if not kept:
        raise SdssNameError(f"{product} holds {' and '.join(i.upper() for i in PRODUCTS[product])} spectra: "
                            f"none of {', '.join(pipelines)} reads them")
    return kept, notes


def pipelines_for_file(path: str, pipelines: Iterable[str]) -> list[str]:
    """Which of ``pipelines`` read the product that ``path``'s name follows (none for an unknown name)."""
    from workers import registry
    from workers.readers.formats import FORMAT_TABLE

    name = path.rsplit("/", 1)[-1].removesuffix(".gz")
    fmt = next((f.name for f in FORMAT_TABLE if f.file_name.match(name)), None)
    product = {"spec-lite": "specLite"}.get(fmt, fmt)
    return [p for p in pipelines if registry.get(p).instrument in PRODUCTS.get(product, ())]


def cli_names(release_name: str | None, product: str | None, table: str | None,
              tokens: Iterable[str]) -> dict | None:
    """The SDSS-name arguments of ``specq enqueue`` / ``specq run`` as keyword arguments of
    :func:`tasks.producer.submit`; None when none of ``--release``, ``--product``, ``--table``
    was given (the positional arguments are then file names)."""
    if not (release_name or product or table):
        return None
    if not release_name or not product:
        missing = "--release (e.g. dr19)" if not release_name else "--product (e.g. specLite)"
        raise SdssNameError(f"a spectrum named the SDSS way needs {missing}")
    keywords = parse_keywords(tokens)
    if table is None and not keywords:
        raise SdssNameError(f"name the {product} spectra by keywords (name=value) or by --table FILE")
    return {"release": release_name, "product": product, "table": table, **keywords}
