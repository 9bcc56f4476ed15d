"""Result rows → the files astronomers use: the SDSS summary-file layout, CSV and Parquet.

One table builder serves ``specq run`` and ``specq results export``, so every output
has the same columns (:meth:`~workers.schema.ResultSchema.output_fields`): named, typed
and united as in the SDSS summary products (``astraAllStarBossNet``,
``astraAllVisitBossNet``, ``astraAllStarAstroNNdist``), each with its description.

FITS files follow those products' layout: HDU 0 holds only a header (``PIPELINE``,
``V_SPECQ``, ``CREATED``, the model's sha256, the MC draws, ``DEMO``, and ``COMMENT``
lines naming the HDUs); HDU 1 ``BOSS`` and HDU 2 ``APOGEE`` are binary tables with the
same columns, the rows in the HDU of the spectrograph they came from (a pipeline reads
one spectrograph, so the other table is empty). Every column has ``TUNIT`` (where it has
a unit) and ``TCOMM`` (its description); integers that are unknown are ``TNULL`` = -1.
Every HDU carries ``CHECKSUM`` and ``DATASUM``, as the survey's files do, and a name
ending ``.fits.gz`` (or ``gzip=True``) writes the file gzipped.

Imports numpy and astropy only (no torch): producers export.
"""
from __future__ import annotations

import datetime as dt
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from workers.schema import Field, ResultSchema

OUTPUT_SUFFIXES = (".csv", ".fits", ".fit", ".parquet")
_GZIP_FITS = (".fits.gz", ".fit.gz")
# HDUs of a summary file: (index, EXTNAME, the instrument whose spectra fill it).
TABLE_HDUS = ((1, "BOSS", "boss"), (2, "APOGEE", "apogee"))
# Sources beyond SDSS's two spectrographs: their pipelines' exports add one table, HDU 3, after BOSS and APOGEE.
OTHER_SOURCE_HDUS = {"lamost": "LAMOST", "gaia_rvs": "GAIA_RVS", "gaia_xp": "GAIA_XP"}
INT_NULL = -1  # TNULL of integer columns: no identifier, MJD or flag word is negative
_FITS_FORMATS = {"float32": "E", "float64": "D", "int16": "I", "int32": "J", "int64": "K", "bool": "L"}
_CREATED_FORMAT = "%y-%m-%d %H:%M:%S"  # the data model's CREATED card (UTC)
DEMO_COMMENT = "DEMO WEIGHTS: seeded random weights, not a trained model; values are not science."


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(value: Any) -> str:
    """A stored timestamp as ISO text in UTC (26 characters, as the data model's ``created``)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    return str(value)


_ASCII = str.maketrans({"·": "*", "−": "-", "–": "-", "—": "-", "Å": "Angstrom", "×": "x"})


def _ascii(text: str) -> str:
    """``text`` for a FITS header (printable ASCII): the schema's typography spelled plainly."""
    plain = unicodedata.normalize("NFKD", text.translate(_ASCII))
    return plain.encode("ascii", "ignore").decode("ascii")


def _float32_text(value) -> str:
    """The shortest text that reads back as this float32."""
    return str(np.float32(value))


def _column(field: Field, values: list[Any]):
    """One output column of ``field``'s exported type; unknown integers masked, floats NaN."""
    from astropy.table import Column, MaskedColumn

    kind = field.output_type
    if kind.startswith("float"):
        data = np.array([np.nan if v is None else float(v) for v in values], dtype=kind)
        column = Column(data)
    elif kind.startswith("int"):
        # A value the column's type cannot hold (an MJD beyond int32 from a broken header) is
        # unknown, as an id beyond 64 bits is (workers.row): the rest of the export still comes out.
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        numbers = [None if v is None else int(v) for v in values]
        missing = np.array([v is None or not low <= v <= high for v in numbers], dtype=bool)
        data = np.array([INT_NULL if gone else v for v, gone in zip(numbers, missing)], dtype=kind)
        column = MaskedColumn(data, mask=missing, fill_value=INT_NULL)
    elif kind == "bool":
        column = Column(np.array([bool(v) for v in values], dtype=bool))
    else:
        text = [_iso(v) if field.dtype == "time" else ("" if v is None else str(v)) for v in values]
        column = Column(np.array(text, dtype=str) if text else np.array([], dtype="U1"))
    column.description = field.description
    if field.unit:
        import astropy.units as u

        # The data model's spelling is kept; astropy may not know it (log10(cm/s^2)).
        column.unit = u.Unit(field.unit, parse_strict="silent")
    return column


def _values(field: Field, rows: Sequence[Mapping[str, Any]], schema: ResultSchema) -> list[Any]:
    """The values of one output column, from stored rows (flag bits from ``result_flags``)."""
    flag = next((f for f in schema.flags if f.name == field.name), None)
    if flag is not None:
        return [bool(int(r.get("result_flags") or 0) & flag.value) for r in rows]
    return [r.get(field.name) for r in rows]


def results_table(schema: ResultSchema, rows: Sequence[Mapping[str, Any]], all_columns: bool = False):
    """Result rows as an astropy `Table` in the exported layout.

    Parameters
    ----------
    schema : ResultSchema
        The pipeline the rows belong to.
    rows : sequence of mapping
        Stored rows (:meth:`ResultStore.rows`) or rows fresh from the engine.
    all_columns : bool
        Add the provenance columns (key, code version, task, worker, created, t_elapsed).

    Returns
    -------
    astropy.table.Table
        Columns named, typed and united as exported; ``meta`` holds the header cards of a
        summary file (:func:`header_cards`) and ``specq_pipeline``.
    """
    from astropy.table import Table

    table = Table()
    for f in schema.output_fields(all_columns):
        table[f.output_name] = _column(f, _values(f, rows, schema))
    table.meta.update(header_cards(schema, rows))
    table.meta["specq_pipeline"] = schema.pipeline
    return table


def header_cards(schema: ResultSchema, rows: Sequence[Mapping[str, Any]],
                 created: dt.datetime | None = None) -> dict[str, Any]:
    """Primary-header cards of a summary file of ``rows``.

    ``MODEL`` is the weights' sha256 when one model made every row, else ``NMODELS`` and
    ``MODEL1``… in first-seen order; ``DRAWS`` likewise (``DRAWS1``…).
    """
    from workers import __version__

    cards: dict[str, Any] = {"PIPELINE": schema.product or schema.pipeline, "V_SPECQ": __version__,
                             "CREATED": (created or _now()).strftime(_CREATED_FORMAT)}
    models = list(dict.fromkeys(r.get("model_sha256") for r in rows if r.get("model_sha256")))
    if len(models) == 1:
        cards["MODEL"] = models[0]
    elif models:
        cards["NMODELS"] = len(models)
        cards.update({f"MODEL{i}": sha for i, sha in enumerate(models, 1)})
    draws = list(dict.fromkeys(int(r["draws"]) for r in rows if r.get("draws") is not None))
    if len(draws) == 1:
        cards["DRAWS"] = draws[0]
    else:
        cards.update({f"DRAWS{i}": n for i, n in enumerate(draws, 1)})
    cards["DEMO"] = any(bool(r.get("demo_weights")) for r in rows)
    return cards


_CARD_COMMENTS = {"PIPELINE": "Pipeline name", "V_SPECQ": "specq version",
                  "CREATED": "File creation time (UTC %y-%m-%d %H:%M:%S)",
                  "MODEL": "sha256 of the model weights", "NMODELS": "Models that made the rows",
                  "DRAWS": "Monte Carlo draws per spectrum",
                  "DEMO": "Demo weights made some rows: not science"}


def _card_comment(key: str) -> str:
    return _CARD_COMMENTS.get(key.rstrip("0123456789"), "")


def _fits_column(name: str, column, unit: str):
    """An astropy.io.fits Column of an exported table column."""
    from astropy.io import fits

    data = np.asarray(getattr(column, "data", column))
    kind = data.dtype
    if kind.kind in "US":
        # FITS text is ASCII: anything else (a path, an error message) is escaped, not lost.
        text = [str(v).encode("ascii", "backslashreplace") for v in data]
        width = max([len(t) for t in text] + [1])
        return fits.Column(name=name, format=f"{width}A", unit=unit or None, array=np.array(text, dtype=f"S{width}"))
    code = _FITS_FORMATS["bool" if kind == bool else str(kind)]
    null = None
    if kind.kind == "i":
        null = INT_NULL
        mask = getattr(column, "mask", None)
        if mask is not None:
            data = np.where(np.asarray(mask, dtype=bool), INT_NULL, data).astype(kind)
    return fits.Column(name=name, format=code, unit=unit or None, null=null, array=data)


def write_summary_fits(table, path: str | Path, schema: ResultSchema, overwrite: bool = True) -> Path:
    """Write ``table`` (from :func:`results_table`) in the SDSS summary-file layout."""
    from astropy.io import fits

    from workers.registry import get

    instrument = get(schema.pipeline).instrument  # the spectrograph whose spectra the pipeline reads
    table_hdus = TABLE_HDUS + (((3, OTHER_SOURCE_HDUS[instrument], instrument),)
                               if instrument in OTHER_SOURCE_HDUS else ())
    units = {f.output_name: f.unit for f in schema.output_fields(all_columns=True)}
    descriptions = {name: table[name].description or "" for name in table.colnames}
    primary = fits.PrimaryHDU()
    for key, value in table.meta.items():
        if key.isupper() and len(key) <= 8:
            # A sha256 fills the card: no room for a comment.
            value = _ascii(value) if isinstance(value, str) else value
            primary.header[key] = (value, _card_comment(key) if len(str(value)) < 40 else "")
    if table.meta.get("DEMO"):
        primary.header.add_comment(DEMO_COMMENT)
    primary.header.add_comment("HDU 0: Summary information only")
    for index, extname, _ in table_hdus:
        primary.header.add_comment(f"HDU {index}: {extname} spectra")
    hdus = [primary]
    for index, extname, holds in table_hdus:
        part = table if holds == instrument else table[:0]
        columns = [_fits_column(name, part[name], units.get(name, "")) for name in part.colnames]
        hdu = fits.BinTableHDU.from_columns(columns, name=extname)
        for key in ("INSTRMNT", "PIPELINE", "V_SPECQ", "CREATED", "DEMO"):
            value = extname if key == "INSTRMNT" else table.meta.get(key)
            if value is not None:
                hdu.header[key] = (value, "Instrument" if key == "INSTRMNT" else _card_comment(key))
        for i, name in enumerate(part.colnames, 1):
            if descriptions[name]:
                hdu.header[f"TCOMM{i}"] = _ascii(descriptions[name])
        hdus.append(hdu)
    # checksum=True adds CHECKSUM and DATASUM to every HDU.
    hdul, path = fits.HDUList(hdus), Path(path)
    if path.name.lower().endswith(".gz") and not path.name.endswith(".gz"):
        # astropy gzips only a name ending in lower-case .gz: ``.FITS.GZ`` is gzipped here.
        import gzip

        if path.exists() and not overwrite:
            raise OSError(f"{path} exists")
        with gzip.open(path, "wb") as out:
            hdul.writeto(out, checksum=True)
    else:
        hdul.writeto(path, overwrite=overwrite, checksum=True)
    return path


def check_output_path(path: str | Path) -> Path:
    """``path`` as a Path when its name says a format specq writes (see :func:`output_format`).

    Raises
    ------
    ValueError
        Another extension; the message names the formats.
    """
    return output_format(path)[0]


def output_format(path: str | Path, gzip: bool = False) -> tuple[Path, str]:
    """The file a result table goes to, and its format: ``"csv"``, ``"fits"`` or ``"parquet"``.

    ``.fits.gz`` (or ``.fit.gz``) is FITS, gzipped; ``gzip`` adds ``.gz`` to a FITS name.

    Raises
    ------
    ValueError
        Another extension, or ``gzip`` for a CSV or Parquet file.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_GZIP_FITS):
        return path, "fits"
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: unknown output format {suffix or '(no extension)'!r}; "
                         "use .csv, .fits, .fits.gz or .parquet")
    kind = "fits" if suffix in (".fits", ".fit") else suffix[1:]
    if gzip and kind != "fits":
        raise ValueError(f"{path}: --gzip writes FITS files (.fits.gz); {kind} files are written as they are")
    return (path.with_name(path.name + ".gz") if gzip else path), kind


def write_results(table, path: str | Path, overwrite: bool = True, gzip: bool = False) -> Path:
    """Write a table from :func:`results_table`; the format follows the extension.

    ``.fits``/``.fit`` (``.fits.gz``: gzipped): the summary-file layout
    (:func:`write_summary_fits`); ``.csv`` and ``.parquet``: the same columns (Parquet
    keeps units, descriptions and the header cards as metadata, and unknown values as
    nulls; CSV is the columns alone).

    Parameters
    ----------
    gzip : bool
        Write a FITS file gzipped, its name ending ``.gz`` (see :func:`output_format`).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        Another extension (see :func:`output_format`).
    """
    from workers.registry import schemas

    path, kind = output_format(path, gzip)
    # The folder made and the file written are one: astropy and pyarrow expand ``~`` themselves.
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fits":
        return write_summary_fits(table, path, schemas()[table.meta["specq_pipeline"]], overwrite=overwrite)
    out = table.copy()
    if kind == "csv":
        out.meta = {}
        for column in out.itercols():
            if column.dtype == np.float32:
                column.format = _float32_text  # 0.1, not the float64 expansion 0.10000000149011612
        out.write(path, format="ascii.csv", overwrite=overwrite)
    else:
        write_parquet(out, path, overwrite=overwrite)
    return path


def write_parquet(table, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``table`` as Parquet whose unknown values are nulls (Arrow's validity bitmap).

    A masked integer and a NaN float are null, so pyarrow, pandas, Spark and DuckDB read
    them as missing: no ``*.mask`` columns, no sentinel. Units, descriptions and the
    table's header cards travel as astropy's table metadata (``table_meta_yaml``), which
    :func:`read_results` and ``Table.read`` both understand.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table, meta

    path = Path(path)
    if path.exists() and not overwrite:
        raise OSError(f"{path} exists")
    arrays, names, lengths = [], [], {}
    for column in table.itercols():
        data = np.asarray(getattr(column, "data", column))
        missing = np.asarray(getattr(column, "mask", np.zeros(len(column), bool)), dtype=bool)
        if data.dtype.kind == "f":
            missing = missing | np.isnan(data)
        if data.dtype.kind == "U":
            arrays.append(pa.array(data.tolist(), type=pa.string(), mask=missing if missing.any() else None))
            lengths[f"table::len::{column.name}"] = str(max(data.dtype.itemsize // 4, 1))
        else:
            arrays.append(pa.array(data, mask=missing if missing.any() else None))
        names.append(column.name)
    plain = Table([np.asarray(getattr(c, "data", c)) for c in table.itercols()], names=table.colnames,
                  meta=table.meta)
    for name in table.colnames:
        plain[name].unit, plain[name].description = table[name].unit, table[name].description
    with warnings.catch_warnings():
        # Units astropy cannot parse (log10(cm/s^2)) are kept as text, which it warns about.
        warnings.simplefilter("ignore", category=UserWarning)
        header = "\n".join(meta.get_yaml_from_table(plain))
    metadata = {k.encode(): v.encode() for k, v in {**lengths, "table_meta_yaml": header}.items()}
    pq.write_table(pa.table(arrays, names=names).replace_schema_metadata(metadata), path)
    return path


def _read_parquet(path: Path):
    """A Parquet file of :func:`write_parquet` (or any other) as an astropy `Table`; nulls masked.

    Integers with nulls come back as masked columns of their own type, floats as NaN,
    text as empty strings, as :func:`results_table` makes them.
    """
    import pyarrow.parquet as pq
    from astropy.table import Column, MaskedColumn, Table, meta

    arrow = pq.read_table(path)
    md = {k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()}
    header = meta.get_header_from_yaml(md["table_meta_yaml"].split("\n")) if "table_meta_yaml" in md else {}
    described = {c["name"]: c for c in header.get("datatype", [])}
    table = Table(meta=header.get("meta", {}))
    for name in arrow.column_names:
        values = arrow[name]
        missing = values.is_null().to_numpy(zero_copy_only=False)
        kind = values.type
        if str(kind) in ("string", "large_string"):
            column = Column(np.array(["" if v is None else v for v in values.to_pylist()], dtype=str)
                            if len(values) else np.array([], dtype="U1"))
        elif str(kind).startswith("float") or str(kind) in ("double", "halffloat"):
            column = Column(values.to_numpy(zero_copy_only=False))  # nulls read as NaN
        elif missing.any():
            filled = values.fill_null(0 if str(kind) != "bool" else False).to_numpy(zero_copy_only=False)
            column = MaskedColumn(filled, mask=missing, fill_value=INT_NULL)
        else:
            column = Column(values.to_numpy(zero_copy_only=False))
        for attribute in ("unit", "description"):
            if attribute in described.get(name, {}):
                setattr(column, attribute, described[name][attribute])
        table[name] = column
    return table


def read_results(path: str | Path):
    """An exported file as one astropy `Table` (a FITS file's BOSS and APOGEE rows together).

    ``meta["specq_pipeline"]`` names the pipeline when the file says (FITS ``PIPELINE``
    card, Parquet metadata) or its columns tell (:func:`pipelines_of_columns`).
    """
    from astropy.io import fits
    from astropy.table import Table, vstack
    from astropy.units import UnitsWarning

    from workers.registry import schemas

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UnitsWarning)
        if path.suffix.lower() in (".fits", ".fit", ".gz"):
            with fits.open(path) as hdul:
                parts = [Table.read(hdul[i]) for i in range(1, len(hdul)) if isinstance(hdul[i], fits.BinTableHDU)]
                primary = dict(hdul[0].header)
            table = vstack([p for p in parts if len(p)] or parts[:1])
            table.meta = {k: v for k, v in primary.items() if k not in ("COMMENT", "HISTORY", "")}
        elif path.suffix.lower() == ".csv":
            from astropy.io.ascii import convert_numpy

            # True/False read back as booleans, not text.
            guesses = [convert_numpy(int), convert_numpy(float), convert_numpy(bool), convert_numpy(str)]
            table = Table.read(path, format="ascii.csv", converters={"*": guesses})
        elif path.suffix.lower() == ".parquet":
            table = _read_parquet(path)
        else:
            table = Table.read(path)
    if "specq_pipeline" not in table.meta:
        by_product = {s.product: p for p, s in schemas().items()}
        pipeline = by_product.get(table.meta.get("PIPELINE"))
        if pipeline is None:  # a CSV: the columns tell, when they are one pipeline's only
            fitting = pipelines_of_columns(table.colnames)
            pipeline = fitting[0] if len(fitting) == 1 else None
        if pipeline is not None:
            table.meta["specq_pipeline"] = pipeline
    return table


def pipelines_of_columns(colnames: Sequence[str]) -> list[str]:
    """The pipelines whose results have these columns, the most specific only.

    A pipeline fits when every field of its schema is a column; of those that fit, one whose
    fields are all another's is dropped (BossNet's columns hold BossNet-on-APOGEE's). Several
    left means that the columns cannot tell: BossNet on BOSS and on LAMOST write the same
    columns, as do BossNet on APOGEE, Gaia RVS and Gaia XP.
    """
    from workers.registry import schemas

    have = set(colnames)
    fitting = {p: {f.output_name for f in s.fields} for p, s in schemas().items()}
    fitting = {p: fields for p, fields in fitting.items() if fields <= have}
    return [p for p, fields in fitting.items() if not any(fields < other for other in fitting.values())]
