"""The SDSS products specq reads: one table from format to its detector, lister and reader.

:data:`FORMAT_TABLE` is the only place a format is dispatched on. :func:`detect` decides a
file's format from its content — the ``FILETYPE`` card, else the first detector in the
table that recognises the HDU layout — and from its name (the SDSS naming conventions). When
both tell and they disagree, the file is refused with a :class:`FormatMismatchError` naming
both (a renamed or mislabelled file must not be read as the wrong product); when only the
name tells, the name decides.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from workers.readers import apstar, gaia, lamost, mwm, spec_lite
from workers.readers.errors import FormatMismatchError
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

__all__ = ["FILE_PATTERNS", "FORMAT_TABLE", "PRODUCTS", "Format", "detect"]


@dataclass(frozen=True)
class Format:
    """One SDSS product.

    Attributes
    ----------
    name : str
        ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"``, ``"apStar"``, ``"lamostDR7"``,
        ``"lamostDR8"``, ``"gaiaRVS"`` or ``"gaiaXP"``.
    file_glob : str or None
        The naming convention as a shell pattern (a gzipped copy adds ``.gz``); None for a
        product whose name never decides (LAMOST's look like BOSS's; Gaia's are free).
    evidence : callable
        ``evidence(handle)``: why the content is this product (for messages), or None.
    list_slots : callable
        ``list_slots(handle, instrument)``: the spectra a pipeline for ``instrument`` takes.
    read : callable
        ``read(handle, hdu, row, rel_path)``: one :class:`~workers.spectrum.Spectrum`.
    search_globs : tuple of str
        More names a folder search picks up for this product (its content then decides).
    file_name : re.Pattern
        ``file_glob`` as a case-insensitive expression (matched against the name less ``.gz``).
    """

    name: str
    file_glob: str | None
    evidence: Callable[[FitsFile], str | None]
    list_slots: Callable[[FitsFile, str], list[SpectrumSlot]]
    read: Callable[[FitsFile, int, int, str], Spectrum]
    search_globs: tuple[str, ...] = ()
    file_name: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        name = re.compile(fnmatch.translate(self.file_glob), re.IGNORECASE) if self.file_glob else re.compile(r"(?!)")
        object.__setattr__(self, "file_name", name)


# In the order content detection tries them.
FORMAT_TABLE = (
    Format(mwm.VISIT, "mwmVisit-*.fits", partial(mwm.evidence, fmt=mwm.VISIT),
           partial(mwm.list_slots, fmt=mwm.VISIT), partial(mwm.read, fmt=mwm.VISIT)),
    Format(mwm.STAR, "mwmStar-*.fits", partial(mwm.evidence, fmt=mwm.STAR),
           partial(mwm.list_slots, fmt=mwm.STAR), partial(mwm.read, fmt=mwm.STAR)),
    # LAMOST before spec-lite: a DR8 table is called COADD too (see workers.readers.lamost). Their
    # names look like BOSS's (spec-<mjd>-<plan>_sp<nn>-<fiber>.fits), so a name never decides for them.
    Format(lamost.DR8, None, lamost.evidence_dr8, lamost.list_slots_dr8, lamost.read_dr8,
           search_globs=("spec-*_sp*-*.fits", "spec-*_sp*-*.fits.gz")),
    Format(lamost.DR7, None, lamost.evidence_dr7, lamost.list_slots_dr7, lamost.read_dr7),
    # Gaia DR3 RVS and XP tables, as the archive serves them or with the same columns.
    *(Format(kind, None, partial(gaia.evidence, kind=kind), partial(gaia.list_slots, kind=kind),
             partial(gaia.read, kind=kind), search_globs=globs)
      for kind, globs in ((gaia.XP, ("XP_CONTINUOUS*.fits", "XP_CONTINUOUS*.parquet", "*.ecsv", "*.ecsv.gz")),
                          (gaia.RVS, ("RVS*.fits", "RVS*.parquet")))),
    # spec-<plate or field>-<mjd>-<fiber or catalogid>.fits, all three numbers
    Format(spec_lite.FORMAT, "spec-[0-9]*-[0-9]*-[0-9]*.fits", spec_lite.evidence, spec_lite.list_slots,
           spec_lite.read),
    # apStar (APO) and asStar (LCO)
    Format(apstar.FORMAT, "a[ps]Star-*.fits", apstar.evidence, apstar.list_slots, apstar.read),
)
_BY_NAME = {fmt.name: fmt for fmt in FORMAT_TABLE}
#: The products' names, as :func:`workers.readers.detect_format` returns them.
PRODUCTS = tuple(_BY_NAME)
#: The names of spectrum files, plain and gzipped: what ``specq watch`` sends and what a
#: folder given to ``specq run`` or ``specq enqueue`` is searched for.
FILE_PATTERNS = tuple(dict.fromkeys(
    [glob for fmt in FORMAT_TABLE if fmt.file_glob for glob in (fmt.file_glob, fmt.file_glob + ".gz")]
    + [glob for fmt in FORMAT_TABLE for glob in fmt.search_globs]))

# FILETYPE values (a card some SDSS products carry) → our format names.
_FILETYPES = {"spec-lite": "spec-lite", "speclite": "spec-lite", "spec": "spec-lite",
              "mwmvisit": "mwmVisit", "mwmstar": "mwmStar", "apstar": "apStar", "asstar": "apStar"}


def _from_content(handle: FitsFile) -> tuple[Format, str] | None:
    """(format, why) from the FILETYPE card or the HDU layout; None when neither tells."""
    filetype = handle.header(0).get("FILETYPE")
    if isinstance(filetype, str) and filetype.strip().lower() in _FILETYPES:
        return _BY_NAME[_FILETYPES[filetype.strip().lower()]], f"its FILETYPE card says {filetype.strip()!r}"
    for fmt in FORMAT_TABLE:
        why = fmt.evidence(handle)
        if why is not None:
            return fmt, why
    return None


# Every naming convention in one expression, an alternative named after its format's place in
# the table: the first alternative that matches the whole name is the first format that does.
_NAMED = [fmt for fmt in FORMAT_TABLE if fmt.file_glob]
_ANY_NAME = re.compile("|".join(f"(?P<f{i}>{fmt.file_name.pattern})" for i, fmt in enumerate(_NAMED)), re.IGNORECASE)


def _from_name(name: str) -> Format | None:
    found = _ANY_NAME.fullmatch(name)
    return None if found is None else _NAMED[int(found.lastgroup[1:])]


_HDUS_NAMED = 8  # HDUs an unknown layout's message describes


def detect(handle: FitsFile) -> Format:
    """The format of an open file (worked out once per file version, see :meth:`FitsFile.keep`).

    Raises
    ------
    FormatMismatchError
        The file name names one product and the content is another.
    SpectrumError
        Neither the content nor the name tells.
    """
    found = handle.kept("format")
    if found is None:
        reads = handle.data_reads
        found = _detect(handle)
        if handle.data_reads == reads:  # decided by the headers and the name alone
            handle.keep("format", found)
    return found


def _detect(handle: FitsFile) -> Format:
    content = _from_content(handle)
    named = _from_name(handle.name)
    if content is not None and named is not None and content[0] is not named:
        fmt, why = content
        raise FormatMismatchError(
            f"{handle.path}: the file name says {named.name} but the content is {fmt.name} ({why}): "
            f"not read, as it could be either; rename the file or fix its content")
    if content is not None:
        return content[0]
    if named is not None:
        return named
    if mwm.looks_like(handle):
        raise SpectrumError(f"{handle.path}: an MWM file, but neither its columns nor its name "
                            f"tell mwmStar from mwmVisit")
    # The first HDUs and the count: one entry per HDU made a message of megabytes for a file
    # of a hundred thousand empty HDUs.
    count = handle.hdu_count()
    layout = ", ".join(handle.describe(i) for i in range(min(count, _HDUS_NAMED)))
    if count > _HDUS_NAMED:
        layout += f", … {count} HDUs in all"
    raise SpectrumError(f"{handle.path}: unknown file layout ({layout}): expected a spec-lite, "
                        f"mwmVisit, mwmStar, apStar, LAMOST or Gaia table file")
