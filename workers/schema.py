"""Declaring a pipeline's result once: fields, units, descriptions and flag bits.

The result-store table, the CSV/FITS/Parquet columns, the documentation and the
flag logic are all built from one :class:`ResultSchema` per pipeline. This module
imports no heavy libraries so that producers and the store can read schemas.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np


# How each kind of value is written to the summary files unless a `Field` says otherwise:
# the SDSS data model stores floats as float32 and identifiers as int64.
OUTPUT_TYPES = {"float": "float32", "int": "int64", "bool": "bool", "str": "str", "time": "str"}


@dataclass(frozen=True)
class Field:
    """One output column.

    Parameters
    ----------
    name : str
        The field's one name: in the rows the pipelines return, the result store's
        column and the exported files' column, as the SDSS data model spells it
        (e.g. ``teff``, ``bn_v_r``, ``nn_dist``, ``L_fakemag``).
    dtype : {"float", "int", "bool", "str", "time"}
        Storage type (``time``: a UTC timestamp).
    unit : str
        Unit as the SDSS data model spells it (``km/s``, ``log10(cm/s^2)``), "" for none;
        written as TUNIT and as the astropy unit of exported tables.
    description : str
        One line for the docs and the FITS column comment (TCOMM).
    out_type : str, optional
        Type in exported files (``float32``, ``float64``, ``int16``, ``int32``, ``int64``,
        ``bool``, ``str``). Default: :data:`OUTPUT_TYPES` of ``dtype``.
    formerly : tuple of str, optional
        Names the result store's column had before it took ``name``: the store renames
        such a column of an existing table (:meth:`workers.store.ResultStore.create`).
    """

    name: str
    dtype: str
    unit: str
    description: str
    out_type: str = ""
    formerly: tuple[str, ...] = ()

    @property
    def output_name(self) -> str:
        """The column's name in exported files: its one name."""
        return self.name

    @property
    def output_type(self) -> str:
        """The column's type in exported files."""
        return self.out_type or OUTPUT_TYPES[self.dtype]


@dataclass(frozen=True)
class Flag:
    """One bit of ``result_flags``.

    ``condition`` takes a dict of column arrays (numpy) and returns a boolean array;
    it is None for bits set by the runner itself (exceptions, unreadable input).
    """

    name: str
    bit: int
    description: str
    condition: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None

    @property
    def value(self) -> int:
        return 1 << self.bit


@dataclass(frozen=True)
class ResultSchema:
    """Everything a pipeline writes for one spectrum, declared once."""

    pipeline: str
    description: str
    fields: Sequence[Field]
    flags: Sequence[Flag]
    warn_bits: Sequence[str]
    bad_bits: Sequence[str]
    extra_fields: Sequence[Field] = field(default_factory=tuple)
    exception_flag: str = ""  # the bit set on the row of a spectrum that could not be processed
    product: str = ""  # the pipeline's name in the SDSS summary files (their PIPELINE card)

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise ValueError(f"the result schema of {self.pipeline!r}: {problem}")

    def _problem(self) -> str | None:
        """What makes this declaration unusable (a column written twice, a bit read as two
        flags, a flag named nowhere), or None. Checked when the schema is declared: found
        later, such a mistake overwrites columns in the exports or fails every row."""
        # Compared in lower case: SQLite's column names ignore case.
        names, own = [f.name for f in self.all_fields], reserved_names()
        twice = _repeated(names)
        if twice:
            return f"the field(s) {', '.join(twice)} are declared more than once"
        reserved = sorted(n for n in names if n.lower() in own)
        if reserved:
            return (f"the field(s) {', '.join(reserved)} would overwrite specq's own columns of every result; "
                    f"rename them (specq's own: {', '.join(sorted(own))})")
        for f in self.all_fields:
            if f.dtype not in OUTPUT_TYPES:
                return f"the field {f.name!r} has the type {f.dtype!r}; use one of {', '.join(OUTPUT_TYPES)}"
        flag_names = [f.name for f in self.flags]
        twice = _repeated(flag_names)
        if twice:
            return f"the flag(s) {', '.join(twice)} are declared more than once"
        bits = [f.bit for f in self.flags]
        for f in self.flags:
            if isinstance(f.bit, bool) or not isinstance(f.bit, int) or not 0 <= f.bit < 63:
                return f"the flag {f.name!r} has bit {f.bit!r}; bits run from 0 to 62 (result_flags is a 64-bit integer)"
            if bits.count(f.bit) > 1:
                return (f"bit {f.bit} is declared by {', '.join(g.name for g in self.flags if g.bit == f.bit)}; "
                        f"give each flag its own bit")
        # A flag is exported as a column of its name: it may take no column, a source one included.
        columns = {n.lower() for n in names} | own | {f.name.lower() for f in SOURCE_FIELDS}
        clash = sorted(n for n in flag_names if n.lower() in columns)
        if clash:
            return f"the flag(s) {', '.join(clash)} are named like a column (each flag is exported as a column of its name)"
        for group, named in (("warn_bits", self.warn_bits), ("bad_bits", self.bad_bits),
                             ("exception_flag", [self.exception_flag] if self.exception_flag else [])):
            unknown = [n for n in named if n not in flag_names]
            if unknown:
                return (f"{group} names {', '.join(map(repr, unknown))}, which no flag declares "
                        f"(its flags: {', '.join(flag_names) or 'none'})")
        return None

    def flag(self, name: str) -> Flag:
        for f in self.flags:
            if f.name == name:
                return f
        raise KeyError(f"{self.pipeline} has no flag {name!r}")

    def mask(self, names: Sequence[str]) -> int:
        return sum(self.flag(n).value for n in names)

    @property
    def warn_mask(self) -> int:
        return self.mask(self.warn_bits)

    @property
    def bad_mask(self) -> int:
        return self.mask(self.bad_bits)

    @property
    def all_fields(self) -> list[Field]:
        return [*self.fields, *self.extra_fields]

    @property
    def flag_fields(self) -> list[Field]:
        """One boolean column per flag bit, named as the flag (derived from ``result_flags``)."""
        return [Field(f.name, "bool", "", f"Bit {f.bit} of result_flags: {f.description}") for f in self.flags]

    def output_fields(self, all_columns: bool = False) -> list[Field]:
        """The columns of every export and ``specq run`` output, in order.

        Source identity, the spectrum's place, the pipeline's fields, the summary flags
        and one boolean per flag bit, then what made the row; ``all_columns`` adds the
        provenance (:data:`PROVENANCE_FIELDS`).
        """
        fields = [*self.shared(SOURCE_FIELDS), *OUTPUT_LOCATOR_FIELDS, *self.all_fields, *SUMMARY_FIELDS,
                  *self.flag_fields, *RECORD_FIELDS]
        return fields + list(PROVENANCE_FIELDS) if all_columns else fields

    def shared(self, fields: Sequence[Field]) -> list[Field]:
        """``fields`` less those this pipeline declares itself (its own ``snr`` wins over the source's)."""
        own = {f.name for f in self.all_fields} | {f.output_name for f in self.all_fields}
        return [f for f in fields if f.name not in own and f.output_name not in own]

    def compute_flags(self, columns: Mapping[str, np.ndarray], preset: np.ndarray | int = 0) -> np.ndarray:
        """``result_flags`` from the declared conditions, OR-ed onto ``preset`` bits."""
        n = len(next(iter(columns.values()))) if columns else np.size(preset)
        flags = np.zeros(n, dtype=np.int64) | np.asarray(preset, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            for f in self.flags:
                if f.condition is not None:
                    hit = np.asarray(f.condition(columns), dtype=bool)
                    flags |= np.where(hit, f.value, 0).astype(np.int64)
        return flags

    def summary(self, result_flags: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(flag_warn, flag_bad) booleans from ``result_flags``."""
        rf = np.asarray(result_flags, dtype=np.int64)
        return (rf & self.warn_mask) != 0, (rf & self.bad_mask) != 0

    def decode(self, result_flags: int) -> list[str]:
        """Names of the bits set in one ``result_flags`` value."""
        return [f.name for f in self.flags if int(result_flags) & f.value]

    def undeclared_bits(self, result_flags: int) -> list[int]:
        """Bits set in ``result_flags`` that no flag of this pipeline declares."""
        declared = sum(f.value for f in self.flags)
        extra = int(result_flags) & ~declared
        return [bit for bit in range(64) if extra >> bit & 1]

    def as_dict(self) -> dict:
        """The schema as plain data (``specq schema --json``): fields, flags and what warns or is bad."""
        return {"pipeline": self.pipeline, "description": self.description,
                "fields": [field_dict(f) for f in self.all_fields],
                "flags": [{"name": f.name, "bit": f.bit, "value": f.value, "description": f.description}
                          for f in self.flags],
                "warn_bits": list(self.warn_bits), "bad_bits": list(self.bad_bits)}

    def as_markdown(self) -> str:
        """The schema as a documentation table (the exported names, types and units)."""
        lines = [f"### `{self.pipeline}`", "", self.description, "",
                 "| column | type | unit | description |", "|---|---|---|---|"]
        for f in self.all_fields:
            lines.append(f"| `{f.name}` | {f.output_type} | {f.unit or '—'} | {f.description} |")
        lines += ["", "| flag | bit | description |", "|---|---|---|"]
        for f in self.flags:
            lines.append(f"| `{f.name}` | {f.bit} | {f.description} |")
        lines += ["", f"`flag_warn`: any of {', '.join(self.warn_bits)}. "
                  f"`flag_bad`: any of {', '.join(self.bad_bits)}.", ""]
        return "\n".join(lines)


# -- the columns every pipeline's rows have, declared once -------------------------------------
# The store's tables, the row identity and every export are built from these lists.

LOCATOR_FIELDS: tuple[Field, ...] = (
    Field("spectrum_key", "str", "", "The spectrum's canonical key, path:hdu:row"),
    Field("path", "str", "", "Spectrum file, relative to the data root"),
    Field("hdu", "int", "", "HDU of the spectrum in the file", out_type="int32"),
    Field("row", "int", "", "Row of the spectrum in the HDU", out_type="int32"),
)
"""Where the spectrum is: specq's own address, not in the SDSS data model."""

OUTPUT_LOCATOR_FIELDS = LOCATOR_FIELDS[1:]  # the key is path:hdu:row again; exported with --all-columns

SOURCE_FIELDS: tuple[Field, ...] = (
    Field("sdss_id", "int", "", "SDSS-5 unique identifier"),
    Field("catalogid", "int", "", "Catalog identifier used to target the source"),
    Field("gaia_dr3_source_id", "int", "", "Gaia DR3 source identifier"),
    Field("obj", "str", "", "APOGEE object name (2MASS designation)", formerly=("apogee_id",)),
    Field("spectrum_pk", "int", "", "Astra unique spectrum primary key"),
    Field("ra", "float", "deg", "Right ascension"),
    Field("dec", "float", "deg", "Declination"),
    Field("telescope", "str", "", "Short telescope name"),
    Field("mjd", "int", "", "MJD of the visit (visit spectra)", out_type="int32"),
    Field("min_mjd", "int", "", "Minimum MJD of visits (combined spectra)", out_type="int32"),
    Field("max_mjd", "int", "", "Maximum MJD of visits (combined spectra)", out_type="int32"),
    Field("snr", "float", "", "Signal-to-noise ratio"),
    Field("filetype", "str", "", "SDSS file type that stores this spectrum"),
)
"""Who the source is and how it was observed, as the spectrum file's headers and rows say.

Readers put each value in ``Spectrum.ids`` or ``Spectrum.meta`` under the field's name
(:func:`workers.row.identity` picks them up by these names)."""

SUMMARY_FIELDS: tuple[Field, ...] = (
    Field("result_flags", "int", "", "Bitmask of the pipeline's flags"),
    Field("flag_warn", "bool", "", "A warning flag is set"),
    Field("flag_bad", "bool", "", "The result should not be used"),
)

RECORD_FIELDS: tuple[Field, ...] = (
    Field("error", "str", "", "Why the spectrum could not be processed (empty for a result)"),
    Field("model_sha256", "str", "", "sha256 of the model weights' bytes"),
    Field("demo_weights", "bool", "", "Made with seeded random demo weights, not a trained model"),
    Field("draws", "int", "", "Monte Carlo draws behind the uncertainties", out_type="int32"),
    Field("precision", "str", "", "Reduced precision of the network forward (tf32, bf16); empty: float32"),
)
"""What made the row: in every output, so a result never travels without its model."""

PROVENANCE_FIELDS: tuple[Field, ...] = (
    LOCATOR_FIELDS[0],
    Field("code_version", "str", "", "specq version"),
    Field("task_id", "str", "", "Celery task id (empty for specq run)"),
    Field("worker", "str", "", "The worker (Celery node name) that wrote the row"),
    Field("created", "time", "", "When the row was written (UTC)", out_type="str"),
    Field("t_elapsed", "float", "s", "Seconds spent on the spectrum (its batch's time per spectrum)",
          formerly=("elapsed",)),
)
"""Provenance: exported with ``--all-columns``."""


def _repeated(names: Sequence[str]) -> list[str]:
    """The names that occur more than once, compared in lower case."""
    lowered = [n.lower() for n in names]
    return sorted({n for n in names if lowered.count(n.lower()) > 1})


@functools.lru_cache(maxsize=1)
def reserved_names() -> frozenset[str]:
    """The columns specq writes beside every pipeline's own, which no pipeline field may take.

    The source fields are not among them: a pipeline's own (``snr``) replaces the file's. In
    lower case, as SQLite compares column names.
    """
    own = (*LOCATOR_FIELDS, *SUMMARY_FIELDS, *RECORD_FIELDS, *PROVENANCE_FIELDS)
    # The names shared columns had before (``formerly``): the store renames such a column of an
    # existing table to the new name, so a field of that name would lose its values.
    former = (name for f in (*own, *SOURCE_FIELDS) for name in f.formerly)
    return frozenset(name.lower() for name in ("id", *(f.name for f in own), *former))


def field_dict(f: Field) -> dict:
    """One column as plain data: its name, type in exported files, unit and description."""
    return {"name": f.name, "type": f.output_type, "unit": f.unit, "description": f.description}


SHARED_GROUPS: tuple[tuple[str, tuple[Field, ...]], ...] = (
    ("source", SOURCE_FIELDS), ("place", OUTPUT_LOCATOR_FIELDS), ("flags", SUMMARY_FIELDS),
    ("record", RECORD_FIELDS), ("provenance (--all-columns)", PROVENANCE_FIELDS))
"""The columns every pipeline's exports share, by group, in the order of the docs."""


def shared_markdown() -> str:
    """The columns every pipeline's exports share, as a documentation table."""
    lines = ["### Every pipeline", "",
             "Exports (`specq run`, `specq results export`) have these columns around each pipeline's own: "
             "first the source and the spectrum's place, then the pipeline's fields, then `result_flags`, "
             "`flag_warn`, `flag_bad`, one boolean column per flag bit (named as the flag), and what made the "
             "row. `--all-columns` adds the provenance. FITS files follow the SDSS summary-file layout: "
             "HDU 0 header only, HDU 1 `BOSS`, HDU 2 `APOGEE`.", "",
             "| column | type | unit | description |", "|---|---|---|---|"]
    for group, fields in SHARED_GROUPS:
        for f in fields:
            lines.append(f"| `{f.name}` | {f.output_type} | {f.unit or '—'} | {f.description}; "
                         f"{group} |")
    return "\n".join(lines + [""])
