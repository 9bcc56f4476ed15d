"""The SDSS products specq reads: one table from format to its detector, lister and reader.

:data:`FORMAT_TABLE` is the only place a format is dispatched on. :func:`detect` decides a
file's format from its content — the ``FILETYPE`` card, else the first detector in the
table that recognises the HDU layout — and from its name (the SDSS naming conventions). When
both tell and they disagree, the file is refused with a :class:`FormatMismatchError` naming
both (a renamed or mislabelled file must not be read as the wrong product); when only the
name tells, the name decides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

from workers.readers import apstar, gaia, lamost, mwm, spec_lite
from workers.readers.errors import FormatMismatchError
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

__all__ = ["FORMAT_TABLE", "Format", "detect"]


@dataclass(frozen=True)
class Format:
    """One SDSS product.

    Attributes
    ----------
    name : str
        ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"`` or ``"apStar"``.
    file_name : re.Pattern
        The SDSS naming convention (matched against the name less ``.gz``).
    evidence : callable
        ``evidence(handle)``: why the content is this product (for messages), or None.
    list_slots : callable
        ``list_slots(handle, instrument)``: the spectra a pipeline for ``instrument`` takes.
    read : callable
        ``read(handle, hdu, row, rel_path)``: one :class:`~workers.spectrum.Spectrum`.
    """

    name: str
    file_name: re.Pattern
    evidence: Callable[[FitsFile], str | None]
    list_slots: Callable[[FitsFile, str], list[SpectrumSlot]]
    read: Callable[[FitsFile, int, int, str], Spectrum]


# In the order content detection tries them.
FORMAT_TABLE = (
    Format(mwm.VISIT, re.compile(r"mwmVisit-.+\.fits", re.I), partial(mwm.evidence, fmt=mwm.VISIT),
           partial(mwm.list_slots, fmt=mwm.VISIT), partial(mwm.read, fmt=mwm.VISIT)),
    Format(mwm.STAR, re.compile(r"mwmStar-.+\.fits", re.I), partial(mwm.evidence, fmt=mwm.STAR),
           partial(mwm.list_slots, fmt=mwm.STAR), partial(mwm.read, fmt=mwm.STAR)),
    # LAMOST before spec-lite: a DR8 table is called COADD too (see workers.readers.lamost). Their
    # names look like BOSS's, so a name never decides for them: (?!) matches nothing.
    Format(lamost.DR8, re.compile(r"(?!)"), lamost.evidence_dr8, lamost.list_slots_dr8, lamost.read_dr8),
    Format(lamost.DR7, re.compile(r"(?!)"), lamost.evidence_dr7, lamost.list_slots_dr7, lamost.read_dr7),
    *(Format(kind, re.compile(r"(?!)"), partial(gaia.evidence, kind=kind), partial(gaia.list_slots, kind=kind),
             partial(gaia.read, kind=kind)) for kind in (gaia.XP, gaia.RVS)),
    Format(spec_lite.FORMAT, re.compile(r"spec-\d+-\d+-\d+\.fits", re.I), spec_lite.evidence,
           spec_lite.list_slots, spec_lite.read),
    Format(apstar.FORMAT, re.compile(r"a[ps]Star-.+\.fits", re.I), apstar.evidence,
           apstar.list_slots, apstar.read),
)
_BY_NAME = {fmt.name: fmt for fmt in FORMAT_TABLE}

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


def _from_name(name: str) -> Format | None:
    return next((fmt for fmt in FORMAT_TABLE if fmt.file_name.fullmatch(name)), None)


def detect(handle: FitsFile) -> Format:
    """The format of an open file.

    Raises
    ------
    FormatMismatchError
        The file name names one product and the content is another.
    SpectrumError
        Neither the content nor the name tells.
    """
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
    layout = ", ".join(handle.describe(i) for i in range(handle.hdu_count()))
    raise SpectrumError(f"{handle.path}: unknown file layout ({layout}): expected a spec-lite, "
                        f"mwmVisit, mwmStar, apStar, LAMOST or Gaia table file")
