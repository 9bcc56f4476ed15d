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

A store's rows are exported a chunk at a time (:func:`export_results`): CSV and Parquet
files are written chunk by chunk, a FITS file's table is built from the chunks, so no list
of rows is made. A table in memory (:func:`write_results`) goes through the same writers,
so both write the same files.

Imports numpy and astropy only (no torch): producers export. Over 500 lines because the
table builder and every format's writer share the column conversions and must agree.
"""
from __future__ import annotations

import datetime as dt
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

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


def _array(field: Field, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The values of ``field`` as its exported type, and the mask of an integer column.

    Unknown floats are NaN; unknown integers are ``INT_NULL`` and masked.
    """
    kind = field.output_type
    if kind.startswith("float"):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=kind), None
    if kind.startswith("int"):
        # A value the column's type cannot hold (an MJD beyond int32 from a broken header) is
        # unknown, as an id beyond 64 bits is (workers.row): the rest of the export still comes out.
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        numbers = [None if v is None else int(v) for v in values]
        missing = np.array([v is None or not low <= v <= high for v in numbers], dtype=bool)
        return np.array([INT_NULL if gone else v for v, gone in zip(numbers, missing)], dtype=kind), missing
    if kind == "bool":
        return np.array([bool(v) for v in values], dtype=bool), None
    text = [_iso(v) if field.dtype == "time" else ("" if v is None else str(v)) for v in values]
    return (np.array(text, dtype=str) if text else np.array([], dtype="U1")), None


def _column(field: Field, data: np.ndarray, mask: np.ndarray | None):
    """One output column of ``field`` (see :func:`_array`), with its description and unit."""
    from astropy.table import Column, MaskedColumn

    column = Column(data) if mask is None else MaskedColumn(data, mask=mask, fill_value=INT_NULL)
    column.description = field.description
    if field.unit:
        import astropy.units as u

        # The data model's spelling is kept; astropy may not know it (log10(cm/s^2)).
        column.unit = u.Unit(field.unit, parse_strict="silent")
    return column


#: Stored rows column by column: each stored column's name → its values, one per row.
Columns = Mapping[str, Sequence[Any]]
# The stored columns the primary header's cards are made of.
_CARD_COLUMNS = ("model_sha256", "draws", "demo_weights")


def _length(columns: Columns) -> int:
    return len(next(iter(columns.values()))) if columns else 0


def _stored(columns: Columns, name: str) -> Sequence[Any]:
    """A stored column's values; a column the rows lack is unknown (None) in every row."""
    values = columns.get(name)
    return [None] * _length(columns) if values is None else values


def _values(field: Field, columns: Columns, schema: ResultSchema) -> Sequence[Any]:
    """The values of one output column, from stored rows (flag bits from ``result_flags``)."""
    flag = next((f for f in schema.flags if f.name == field.name), None)
    if flag is not None:
        return [bool(int(v or 0) & flag.value) for v in _stored(columns, "result_flags")]
    return _stored(columns, field.name)


def columns_of(rows: Sequence[Mapping[str, Any]], schema: ResultSchema, all_columns: bool = False) -> dict:
    """``rows`` column by column: the stored columns an export of ``schema`` reads."""
    names = [f.name for f in schema.output_fields(all_columns)] + ["result_flags", *_CARD_COLUMNS]
    return {name: [r.get(name) for r in rows] for name in dict.fromkeys(names)}


class _Cards:
    """What the primary header says of the rows, gathered one chunk of rows at a time."""

    def __init__(self):
        self.models: dict[str, None] = {}  # first-seen order
        self.draws: dict[int, None] = {}
        self.demo = False

    def add(self, columns: Columns) -> None:
        self.models.update(dict.fromkeys(sha for sha in columns.get("model_sha256", ()) if sha))
        self.draws.update(dict.fromkeys(int(n) for n in columns.get("draws", ()) if n is not None))
        self.demo = self.demo or any(bool(v) for v in columns.get("demo_weights", ()))

    def cards(self, schema: ResultSchema, created: dt.datetime | None = None) -> dict[str, Any]:
        from workers import __version__

        cards: dict[str, Any] = {"PIPELINE": schema.product or schema.pipeline, "V_SPECQ": __version__,
                                 "CREATED": (created or _now()).strftime(_CREATED_FORMAT)}
        models, draws = list(self.models), list(self.draws)
        if len(models) == 1:
            cards["MODEL"] = models[0]
        elif models:
            cards["NMODELS"] = len(models)
            cards.update({f"MODEL{i}": sha for i, sha in enumerate(models, 1)})
        if len(draws) == 1:
            cards["DRAWS"] = draws[0]
        else:
            cards.update({f"DRAWS{i}": n for i, n in enumerate(draws, 1)})
        cards["DEMO"] = self.demo
        return cards


class _Chunks:
    """Result tables of successive chunks of stored rows; the header cards gathered on the way.

    Parameters
    ----------
    schema : ResultSchema
    chunks : iterable of mapping
        Stored rows column by column (:meth:`ResultStore.chunks`, :func:`columns_of`).
    all_columns : bool
        Add the provenance columns.
    progress : callable, optional
        Called with the number of rows of each chunk read.
    """

    def __init__(self, schema: ResultSchema, chunks: Iterable[Columns], all_columns: bool = False,
                 progress: Callable[[int], Any] | None = None):
        self.schema, self.chunks, self.progress = schema, chunks, progress
        self.fields = schema.output_fields(all_columns)
        self.collected = _Cards()
        self.rows = 0
        self._meta: dict[str, Any] | None = None

    def arrays(self) -> Iterator[list[tuple[np.ndarray, np.ndarray | None]]]:
        """Each chunk's columns as (values, mask) (:func:`_array`); at least one chunk, maybe empty."""
        empty = True
        for columns in self.chunks:
            n = _length(columns)
            if not n:
                continue
            self.collected.add(columns)
            self.rows += n
            empty = False
            if self.progress is not None:
                self.progress(n)
            yield [_array(f, _values(f, columns, self.schema)) for f in self.fields]
        if empty:  # no rows: one empty chunk still gives the columns and their types
            yield [_array(f, []) for f in self.fields]

    def tables(self) -> Iterator:
        """Each chunk as an astropy `Table` of the exported columns (no ``meta``)."""
        from astropy.table import Table

        for arrays in self.arrays():
            yield Table([_column(f, *a) for f, a in zip(self.fields, arrays)],
                        names=[f.output_name for f in self.fields], copy=False)

    def meta(self) -> dict[str, Any]:
        """A result table's ``meta``, made once every chunk has been read (one ``CREATED``)."""
        if self._meta is None:
            self._meta = {**self.collected.cards(self.schema), "specq_pipeline": self.schema.pipeline}
        return self._meta

    def table(self):
        """Every chunk in one astropy `Table` with its ``meta`` (:func:`results_table`)."""
        from astropy.table import Table

        parts: list[list] = [[] for _ in self.fields]
        for arrays in self.arrays():
            for part, array in zip(parts, arrays):
                part.append(array)
        table = Table()
        for i, f in enumerate(self.fields):
            # One column at a time, its chunks let go once joined: the peak is the table and one column.
            data = np.concatenate([d for d, _ in parts[i]])
            masks = [m for _, m in parts[i]]
            parts[i] = []
            table[f.output_name] = _column(f, data, None if masks[0] is None else np.concatenate(masks))
        table.meta.update(self.meta())
        return table


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
    return chunks_table(schema, [columns_of(rows, schema, all_columns)], all_columns)


def chunks_table(schema: ResultSchema, chunks: Iterable[Columns], all_columns: bool = False):
    """Stored rows read a chunk at a time as one astropy `Table`, that of :func:`results_table`.

    Parameters
    ----------
    schema : ResultSchema
        The pipeline the rows belong to.
    chunks : iterable of mapping
        Successive chunks of stored rows, each column by column (stored column name →
        values): :meth:`ResultStore.chunks`. No list of rows is made.
    all_columns : bool
        Add the provenance columns.

    Returns
    -------
    astropy.table.Table
    """
    return _Chunks(schema, chunks, all_columns).table()


def header_cards(schema: ResultSchema, rows: Sequence[Mapping[str, Any]],
                 created: dt.datetime | None = None) -> dict[str, Any]:
    """Primary-header cards of a summary file of ``rows``.

    ``MODEL`` is the weights' sha256 when one model made every row, else ``NMODELS`` and
    ``MODEL1``… in first-seen order; ``DRAWS`` likewise (``DRAWS1``…).
    """
    collected = _Cards()
    collected.add({name: [r.get(name) for r in rows] for name in _CARD_COLUMNS})
    return collected.cards(schema, created)


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
    return _write_summary_fits([table], path, schema, overwrite)


def _write_summary_fits(held: list, path: str | Path, schema: ResultSchema, overwrite: bool = True) -> Path:
    """:func:`write_summary_fits` of the one table in ``held``, which is taken out of it.

    Once every HDU's FITS columns are made the table is let go, so a table no one else
    holds (an export's) is freed before astropy copies the columns into the file's rows.
    """
    from astropy.io import fits

    from workers.registry import get

    table = held.pop()
    instrument = get(schema.pipeline).instrument  # the spectrograph whose spectra the pipeline reads
    table_hdus = TABLE_HDUS + (((3, OTHER_SOURCE_HDUS[instrument], instrument),)
                               if instrument in OTHER_SOURCE_HDUS else ())
    units = {f.output_name: f.unit for f in schema.output_fields(all_columns=True)}
    descriptions = [table[name].description or "" for name in table.colnames]
    meta = dict(table.meta)
    primary = fits.PrimaryHDU()
    for key, value in meta.items():
        if key.isupper() and len(key) <= 8:
            # A sha256 fills the card: no room for a comment.
            value = _ascii(value) if isinstance(value, str) else value
            primary.header[key] = (value, _card_comment(key) if len(str(value)) < 40 else "")
    if meta.get("DEMO"):
        primary.header.add_comment(DEMO_COMMENT)
    primary.header.add_comment("HDU 0: Summary information only")
    for index, extname, _ in table_hdus:
        primary.header.add_comment(f"HDU {index}: {extname} spectra")
    parts = []
    for index, extname, holds in table_hdus:
        part = table if holds == instrument else table[:0]
        parts.append((extname, [_fits_column(name, part[name], units.get(name, "")) for name in part.colnames]))
    del table, part
    hdus = [primary]
    for extname, columns in parts:
        hdu = fits.BinTableHDU.from_columns(columns, name=extname)
        for key in ("INSTRMNT", "PIPELINE", "V_SPECQ", "CREATED", "DEMO"):
            value = extname if key == "INSTRMNT" else meta.get(key)
            if value is not None:
                hdu.header[key] = (value, "Instrument" if key == "INSTRMNT" else _card_comment(key))
        for i, description in enumerate(descriptions, 1):
            if description:
                hdu.header[f"TCOMM{i}"] = _ascii(description)
        hdus.append(hdu)
    del parts
    # checksum=True adds CHECKSUM and DATASUM to every HDU.
    hdul, path = fits.HDUList(hdus), Path(path)
    if path.name.lower().endswith(".gz") and not path.name.endswith(".gz"):
        # astropy gzips only a name ending in lower-case .gz: ``.FITS.GZ`` is gzipped here.
        import gzip

        _new_file(path, overwrite)
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

    path, kind = _output_file(path, gzip)
    if kind == "fits":
        return write_summary_fits(table, path, schemas()[table.meta["specq_pipeline"]], overwrite=overwrite)
    if kind == "csv":
        _write_csv(_slices(table), path, overwrite)
    else:
        write_parquet(table, path, overwrite=overwrite)
    return path


def export_results(schema: ResultSchema, chunks: Iterable[Columns], path: str | Path, all_columns: bool = False,
                   overwrite: bool = True, gzip: bool = False,
                   progress: Callable[[int], Any] | None = None) -> tuple[Path, int, dict[str, Any]]:
    """Write stored rows read a chunk at a time: the file :func:`write_results` writes of their table.

    CSV and Parquet are written a chunk at a time, so memory does not grow with the rows;
    a FITS file needs every row first (a text column's width is that of its longest
    value), so its table is made in memory, from the chunks (no list of rows).

    Parameters
    ----------
    schema : ResultSchema
        The pipeline the rows belong to.
    chunks : iterable of mapping
        Stored rows, each chunk column by column (:meth:`ResultStore.chunks`).
    path : str or Path
        The output file; its extension says the format (:func:`output_format`).
    all_columns : bool
        Add the provenance columns.
    overwrite, gzip : bool
        As :func:`write_results`.
    progress : callable, optional
        Called with the number of rows of each chunk read.

    Returns
    -------
    tuple
        The file written, the number of rows, and the table's ``meta`` (header cards).

    Raises
    ------
    ValueError
        Another extension (see :func:`output_format`).
    """
    path, kind = _output_file(path, gzip)
    source = _Chunks(schema, chunks, all_columns, progress)
    if kind == "fits":
        # The table is handed over, not kept: freed before the FITS rows are made.
        _write_summary_fits([source.table()], path, schema, overwrite=overwrite)
    elif kind == "csv":
        _write_csv(source.tables(), path, overwrite)
    else:
        _write_parquet(source.tables(), path, overwrite, source.meta)
    return path, source.rows, source.meta()


def _output_file(path: str | Path, gzip: bool) -> tuple[Path, str]:
    """The file of :func:`output_format`, ``~`` expanded, its folder made."""
    path, kind = output_format(path, gzip)
    # The folder made and the file written are one: astropy and pyarrow expand ``~`` themselves.
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, kind


# Rows of a table in memory written at a time (CSV text, Arrow arrays): a bounded copy.
SLICE_ROWS = 65536
# A Parquet row group ends at pyarrow's default length (rows) or once it holds this many bytes of Arrow data.
_ROW_GROUP_ROWS = 1024 * 1024
_ROW_GROUP_BYTES = 32 << 20


def _slices(table, size: int = SLICE_ROWS) -> Iterator:
    """``table`` in successive slices of ``size`` rows; one empty slice when it has none."""
    for start in range(0, max(len(table), 1), size):
        yield table[start:start + size]


def _new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OSError(f"{path} exists")


def _drop_partial(path: Path) -> None:
    """Remove a file whose writing failed: a cut file must not pass for an export."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _write_csv(tables: Iterable, path: Path, overwrite: bool) -> None:
    """Write successive tables (the same columns) as one CSV file, the header once."""
    import io
    import os

    _new_file(path, overwrite)
    try:
        # astropy ends lines with os.linesep itself: no newline translation.
        with open(path, "w", newline="") as out:
            for i, table in enumerate(tables):
                chunk = table.copy(copy_data=False)
                chunk.meta = {}
                for column in chunk.itercols():
                    if column.dtype == np.float32:
                        column.format = _float32_text  # 0.1, not the float64 expansion 0.10000000149011612
                text = io.StringIO()
                chunk.write(text, format="ascii.csv")
                # The header is the first line (column names hold no line break); a value's may.
                out.write(text.getvalue() if i == 0 else text.getvalue().split(os.linesep, 1)[1])
    except BaseException:
        _drop_partial(path)
        raise


def write_parquet(table, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``table`` as Parquet whose unknown values are nulls (Arrow's validity bitmap).

    A masked integer and a NaN float are null, so pyarrow, pandas, Spark and DuckDB read
    them as missing: no ``*.mask`` columns, no sentinel. Units, descriptions and the
    table's header cards travel as astropy's table metadata (``table_meta_yaml``), which
    :func:`read_results` and ``Table.read`` both understand.
    """
    path = Path(path)
    _write_parquet(_slices(table), path, overwrite, lambda: table.meta)
    return path


def _arrow(table) -> tuple[Any, dict[str, int]]:
    """An astropy table as an Arrow table, unknown values null; the width of each text column."""
    import pyarrow as pa

    arrays, widths = [], {}
    for column in table.itercols():
        data = np.asarray(getattr(column, "data", column))
        missing = np.asarray(getattr(column, "mask", np.zeros(len(column), bool)), dtype=bool)
        if data.dtype.kind == "f":
            missing = missing | np.isnan(data)
        if data.dtype.kind == "U":
            arrays.append(pa.array(data.tolist(), type=pa.string(), mask=missing if missing.any() else None))
            widths[column.name] = max(data.dtype.itemsize // 4, 1)
        else:
            arrays.append(pa.array(data, mask=missing if missing.any() else None))
    return pa.table(arrays, names=table.colnames), widths


def _write_parquet(tables: Iterable, path: Path, overwrite: bool, meta: Callable[[], Mapping[str, Any]]) -> None:
    """Write successive tables (the same columns) as one Parquet file (see :func:`write_parquet`).

    ``meta`` gives the table's ``meta`` once every table is written: the header cards and
    the text columns' widths are known only then, so the file's metadata (with the Arrow
    schema that carries it, ``ARROW:schema``) is written in its footer, at the end.
    """
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table
    from astropy.table import meta as table_meta

    _new_file(path, overwrite)
    writer, first, widths, group = None, None, {}, []

    def flush():
        if group:
            writer.write_table(pa.concat_tables(group), row_group_size=_ROW_GROUP_ROWS)
            group.clear()

    try:
        for table in tables:
            arrow, chunk_widths = _arrow(table)
            if writer is None:
                first = table[:0]  # the columns' names, types, units and descriptions; no rows kept
                writer = pq.ParquetWriter(path, arrow.schema, store_schema=False)
            for name, width in chunk_widths.items():
                widths[name] = max(widths.get(name, 1), width)
            # Chunks are gathered into row groups of the size a whole table is written in, up to a bound.
            if sum(t.num_rows for t in group) + arrow.num_rows > _ROW_GROUP_ROWS or \
                    sum(t.nbytes for t in group) + arrow.nbytes > _ROW_GROUP_BYTES:
                flush()
            group.append(arrow)
        flush()
        plain = Table([np.asarray(getattr(c, "data", c)) for c in first.itercols()], names=first.colnames,
                      meta=dict(meta()))
        for name in first.colnames:
            plain[name].unit, plain[name].description = first[name].unit, first[name].description
        with warnings.catch_warnings():
            # Units astropy cannot parse (log10(cm/s^2)) are kept as text, which it warns about.
            warnings.simplefilter("ignore", category=UserWarning)
            header = "\n".join(table_meta.get_yaml_from_table(plain))
        metadata = {**{f"table::len::{name}": str(width) for name, width in widths.items()},
                    "table_meta_yaml": header}
        schema = writer.schema.with_metadata(metadata)
        # What pq.write_table stores: the Arrow schema, with this metadata, beside the metadata itself.
        writer.add_key_value_metadata({"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
                                       **metadata})
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        _drop_partial(path)
        raise


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
