"""Declaring a pipeline's result once: fields, units, descriptions and flag bits.

The result-store table, the CSV/FITS/Parquet columns, the documentation and the
flag logic are all built from one :class:`ResultSchema` per pipeline. This module
imports no heavy libraries so that producers and the store can read schemas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Field:
    """One output column.

    Parameters
    ----------
    name : str
        Column name, as published (e.g. ``teff``, ``bn_v_r``, ``L_fakemag``).
    dtype : {"float", "int", "bool", "str"}
        Storage type.
    unit : str
        Unit as an astropy-parsable string, or "" for dimensionless.
    description : str
        One line for the docs and the FITS header comment.
    """

    name: str
    dtype: str
    unit: str
    description: str


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

    def as_markdown(self) -> str:
        """The schema as a documentation table."""
        lines = [f"### `{self.pipeline}`", "", self.description, "",
                 "| column | type | unit | description |", "|---|---|---|---|"]
        for f in self.all_fields:
            lines.append(f"| `{f.name}` | {f.dtype} | {f.unit or '—'} | {f.description} |")
        lines += ["", "| flag | bit | description |", "|---|---|---|"]
        for f in self.flags:
            lines.append(f"| `{f.name}` | {f.bit} | {f.description} |")
        lines += ["", f"`flag_warn`: any of {', '.join(self.warn_bits)}. "
                  f"`flag_bad`: any of {', '.join(self.bad_bits)}.", ""]
        return "\n".join(lines)
