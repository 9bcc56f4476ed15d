"""What ``specq demo`` gives AstroNN beside its spectra: a source catalog of the demo's stars.

Named by the spec's ``demo_inputs``.
"""
from __future__ import annotations

from pathlib import Path


def write_catalog(truth, folder: Path) -> dict[str, str]:
    """A source catalog (2MASS Ks, E(B-V)) for the demo's APOGEE stars, keyed by apogee_id.

    Returns
    -------
    dict
        ``{"SPECQ_CATALOG": path}``: the setting that hands it to the worker.
    """
    apogee = truth[truth["instrument"] == "apogee"]
    path = Path(folder) / "catalog.csv"
    apogee["apogee_id", "k_mag", "ebv"].write(path, format="ascii.csv", overwrite=True)
    return {"SPECQ_CATALOG": str(path)}
