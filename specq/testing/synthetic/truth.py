"""The labels a synthetic spectrum was made with, as header cards, and reading them back.

Every file is marked ``SPECQSYN = T`` and carries its true labels: ``SYNTEFF``,
``SYNLOGG``, ``SYNFEH``, ``SYNVR`` (the Doppler shift applied to the pixels, km/s),
``SYNSNR`` and, for APOGEE, ``SYNFMAG`` (the astroNN "fakemag" luminosity). Single-
spectrum files carry them in HDU 0; in MWM tables each row has its own cards in the
table header (``SYNTE000``, ``SYNLG000``, ``SYNFE000``, ``SYNVR000``, ``SYNSN000``,
``SYNFM000`` for row 0 …) and HDU 0 has the file-level cards when all rows agree.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

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
