"""Compute ``bossnet_sources.json`` with the network authors' own code (hutchresearch/BOSSNet).

For each of the six data sources (boss, apogee, lamost_dr7, lamost_dr8, gaia_rvs, gaia_xp):

1. seeded random weights of that source's network (``parity_state_dict`` of
   ``tests/bossnet_sources.py``) are written in the ten-chunk format into the authors' model folder;
2. the spectra of ``bossnet_sources_inputs.npz`` are written as the files the authors'
   readers take (spec-lite table, apStar images, LAMOST DR7 image / DR8 table, Gaia ECSV);
3. the authors' pipeline class for the source predicts them with no noise draws, and its
   unnormalised outputs are stored, in its label order.

Run from the repository root, with a copy of the authors' repository (its ``bossnet/``
folder; the published weight files are not needed)::

    git clone https://github.com/hutchresearch/BOSSNet /tmp/authors   # or: git archive HEAD of it
    PYTHONPATH=. python tests/data/make_bossnet_source_vectors.py /tmp/authors

Two adaptations, both outside the authors' files: LAMOST runs with ``stats/boss.yaml`` (the
authors' command line looks for ``stats/lamost_dr7.yaml``, which is not published; the
LAMOST path uses the BOSS model), and the DR8 reader's numpy arrays are turned into tensors
before its collate function, which only takes tensors.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "bossnet_sources_inputs.npz"
OUTPUTS = HERE / "bossnet_sources.json"
N_XP = 55  # coefficients per XP band


def make_inputs(seed: int = 11) -> dict[str, np.ndarray]:
    """Two spectra per source, from the synthetic stellar models, with the gaps each source has."""
    from specq.testing.surveys import lamost_spectrum
    from specq.testing.synthetic import apogee_flux, apogee_wavelength, boss_flux, boss_wavelength

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    stars = ((5800.0, 4.4, 0.0, 12.0), (4600.0, 2.5, -0.8, -40.0))
    wl = boss_wavelength()
    flux, ivar = [], []
    for teff, logg, fe_h, v_r in stars:
        model = boss_flux(wl, teff, logg, fe_h, v_r, rng)
        sigma = np.abs(model) / 30 + 0.05
        flux.append(model + sigma * rng.standard_normal(wl.size))
        ivar.append(1 / sigma**2)
    ivar[1][100:140] = 0.0  # masked pixels
    out.update({"boss/loglam": np.log10(wl).astype(np.float32), "boss/flux": np.array(flux, np.float32),
                "boss/ivar": np.array(ivar, np.float32)})
    wl = apogee_wavelength()
    flux, err = [], []
    for teff, logg, fe_h, _ in stars:
        model = apogee_flux(wl, teff, logg, fe_h, 0.0, rng)
        sigma = np.abs(model) / 80 + 1.0
        flux.append(model + sigma * rng.standard_normal(wl.size))
        err.append(sigma)
    flux[1][:50] = np.nan  # NaN and ±inf become 0 before the log scale
    flux[1][50:52] = np.inf
    err[1][60:70] = np.inf
    out.update({"apogee/flux": np.array(flux, np.float32), "apogee/error": np.array(err, np.float32)})
    for i, (teff, logg, fe_h, v_r) in enumerate(stars):
        w, f, iv = lamost_spectrum(teff, logg, fe_h, v_r, 40.0, seed + i)
        out[f"lamost/wavelength{i}"], out[f"lamost/flux{i}"], out[f"lamost/ivar{i}"] = w, f, iv
    n = 2401
    flux = 1.0 - 0.3 * np.exp(-0.5 * ((np.arange(n)[None, :] - [[600], [1700]]) / 8.0) ** 2)
    flux = flux + 0.01 * rng.standard_normal((2, n))
    error = np.full((2, n), 0.01)
    flux[:, :20] = np.nan  # the RVS band's edges: NaN becomes 1
    error[:, :20] = np.nan
    out.update({"gaia_rvs/source_id": np.array([4295806720, 38655544960], np.int64),
                "gaia_rvs/flux": flux.astype(np.float32), "gaia_rvs/flux_error": error.astype(np.float32)})
    scale = 10.0 ** -np.linspace(0, 3, N_XP)
    out["gaia_xp/source_id"] = np.array([5853498713190525696, 4472832130942575872], np.int64)
    for band in ("bp", "rp"):
        coeff = 500 * scale * rng.standard_normal((2, N_XP))
        errors = np.abs(0.01 * coeff) + 0.05
        corr = []
        for _ in range(2):
            a = rng.standard_normal((N_XP, N_XP))
            c = a @ a.T + N_XP * np.eye(N_XP)
            d = np.sqrt(np.diag(c))
            c = c / d[:, None] / d[None, :]
            rows, cols = np.tril_indices(N_XP, -1)  # the authors' order: row by row below the diagonal
            corr.append(c[rows, cols])
        out[f"gaia_xp/{band}_coefficients"] = coeff
        out[f"gaia_xp/{band}_coefficient_errors"] = errors
        out[f"gaia_xp/{band}_coefficient_correlations"] = np.array(corr)
    return out


def _write_authors_files(inputs: dict, folder: Path) -> dict[str, Path]:
    """The files each of the authors' readers takes; the path lists or tables to give their pipeline."""
    from astropy.io import fits
    from astropy.table import Table

    folder.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {s: [] for s in ("boss", "apogee", "lamost_dr7", "lamost_dr8")}
    for i in range(2):
        path = folder / f"spec-boss-{i}.fits"
        table = fits.BinTableHDU.from_columns([
            fits.Column(name="flux", format="E", array=inputs["boss/flux"][i]),
            fits.Column(name="loglam", format="E", array=inputs["boss/loglam"]),
            fits.Column(name="ivar", format="E", array=inputs["boss/ivar"][i])], name="COADD")
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
        lists["boss"].append(str(path))
        path = folder / f"apStar-{i}.fits"
        # Three rows: row 0 is the combined spectrum the authors read.
        flux = np.vstack([inputs["apogee/flux"][i], np.ones((2, 8575), np.float32)])
        err = np.vstack([inputs["apogee/error"][i], np.ones((2, 8575), np.float32)])
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux), fits.ImageHDU(err)]).writeto(path, overwrite=True)
        lists["apogee"].append(str(path))
        w, f, iv = (inputs[f"lamost/{k}{i}"] for k in ("wavelength", "flux", "ivar"))
        path = folder / f"spec-lamost7-{i}.fits"
        fits.PrimaryHDU(np.stack([f, iv, w, 0 * f, 0 * f])).writeto(path, overwrite=True)
        lists["lamost_dr7"].append(str(path))
        path = folder / f"spec-lamost8-{i}.fits"
        cols = [fits.Column(name=k, format=f"{len(v)}E", array=v[None, :])
                for k, v in (("FLUX", f), ("IVAR", iv), ("WAVELENGTH", w))]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path, overwrite=True)
        lists["lamost_dr8"].append(str(path))
    paths = {}
    for source, files in lists.items():
        paths[source] = folder / f"{source}.txt"
        paths[source].write_text("\n".join(files) + "\n")
    rvs = Table({k: inputs[f"gaia_rvs/{k}"] for k in ("source_id", "flux", "flux_error")})
    paths["gaia_rvs"] = folder / "rvs.ecsv"
    rvs.write(paths["gaia_rvs"], format="ascii.ecsv", overwrite=True)
    xp = Table({k.split("/", 1)[1]: v for k, v in inputs.items() if k.startswith("gaia_xp/")})
    paths["gaia_xp"] = folder / "xp.ecsv"
    xp.write(paths["gaia_xp"], format="ascii.ecsv", overwrite=True)
    return paths


def main(authors: str) -> None:
    import torch
    import yaml

    from workers.bossnet.sources import SOURCES
    from workers.weights.formats import save_chunks

    sys.path.insert(0, str(HERE.parent))
    from bossnet_sources import PARITY_SEED, parity_state_dict

    root = Path(authors).resolve()
    sys.path[:0] = [str(root / "bossnet"), str(root)]
    import dataset as authors_dataset
    import pipeline as authors_pipeline
    from utils import Stats

    inputs = make_inputs()
    np.savez_compressed(INPUTS, **inputs)
    inputs = dict(np.load(INPUTS))
    work = Path("/tmp/bossnet-source-vectors")
    paths = _write_authors_files(inputs, work)
    # The DR8 reader returns numpy arrays; its collate function takes tensors only.
    dr8 = authors_dataset.open_lamost_fitsDR8
    authors_dataset.open_lamost_fitsDR8 = lambda p: tuple(torch.from_numpy(np.asarray(a)) for a in dr8(p))
    results = {"seed": PARITY_SEED, "command": "PYTHONPATH=. python tests/data/make_bossnet_source_vectors.py AUTHORS_CHECKOUT"}
    for data_source, model in (("boss", "boss"), ("apogee", "apogee"), ("lamost_dr7", "boss"),
                               ("lamost_dr8", "boss"), ("gaia_rvs", "gaia_rvs"), ("gaia_xp", "gaia_xp")):
        facts = SOURCES[model]
        save_chunks(parity_state_dict(model), root / "bossnet" / facts.model_folder)
        stats = Stats(**yaml.safe_load((root / "bossnet" / "stats" / f"{model}.yaml").read_text()))
        out = work / f"{data_source}.csv"
        out.unlink(missing_ok=True)
        common = dict(stats=stats, output_file=str(out), num_uncertainty_draws=0)
        if model == "boss":
            pipe = authors_pipeline.BOSSNETPipeline(spectra_paths=str(paths[data_source]), data_source=data_source, **common)
        elif model == "apogee":
            pipe = authors_pipeline.ApogeeNetPipeline(spectra_paths=str(paths[data_source]), **common)
        elif model == "gaia_rvs":
            pipe = authors_pipeline.GAIARVSPipeline(file_path=str(paths[data_source]), **common)
        else:
            pipe = authors_pipeline.GAIAXpPipeline(file_path=str(paths[data_source]), **common)
        with torch.no_grad():
            pipe.predict(batch_size=128, num_workers=0)
        with open(out) as fh:
            rows = list(csv.DictReader(fh))
        results[data_source] = {"labels": list(facts.label_names),
                                "outputs": [[float(r[name]) for name in facts.label_names] for r in rows]}
        print(data_source, results[data_source]["outputs"])
    OUTPUTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
