"""BossNet's sources through specq's commands: a mixed folder given to ``specq run`` and ``specq weights install``
of a clone holding several sources' chunks (the queue, a real worker and what follows them:
``test_bossnet_sources_queue.py``).

Demo weights (seeded random, written once into the weights cache) serve every pipeline here.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from bossnet_sources import inputs
from conftest import ROOT, worker_env

pytestmark = pytest.mark.integration


def _specq(env, *args, cwd=None, ok=True):
    out = subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], env=env, cwd=cwd or ROOT,
                         capture_output=True, text=True, timeout=900)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _mixed_folder(data):
    """BOSS spec-lite, LAMOST DR7 and DR8, a 3-visit apStar, one RVS and one XP table (two stars each)."""
    from astropy.table import Table

    from specq.testing.surveys import write_lamost_dr7, write_lamost_dr8
    from specq.testing.synthetic import write_apstar, write_spec_lite

    data.mkdir(parents=True)
    write_spec_lite(data / "spec-015000-59146-4593082500.fits", teff=5800, logg=4.4, fe_h=0.0, v_r=5.0, snr=30, seed=1)
    write_lamost_dr7(data / "spec-55859-F5902_sp01-001.fits", teff=5500, logg=4.3, fe_h=-0.2, seed=2)
    write_lamost_dr8(data / "spec-57278-EG000023N024031B01_sp02-153.fits", teff=4800, logg=2.6, fe_h=-0.6, seed=3)
    write_apstar(data / "apStar-1.0-apo25m-2M00000001+0000001.fits", teff=4700, logg=2.4, fe_h=-0.3, fakemag=40.0,
                 snr=80, seed=4, nvisits=3, apogee_id="2M00000001+0000001", k_mag=9.0, ebv=0.05)
    stored = inputs()
    for source, name in (("gaia_rvs", "RVS-Gaia_DR3_test.ecsv"), ("gaia_xp", "XP_CONTINUOUS-Gaia_DR3_test.ecsv")):
        prefix = f"{source}/"
        Table({k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}).write(
            data / name, format="ascii.ecsv")
    # spectrum count by pipeline: every spectrum of the folder that each pipeline takes
    return {"bossnet": 1, "astronn_dist": 1, "bossnet_apogee": 1, "bossnet_lamost": 2,
            "bossnet_gaia_rvs": 2, "bossnet_gaia_xp": 2}


def test_a_mixed_folder_sends_each_spectrum_to_every_pipeline_that_takes_it(tmp_path):
    from workers.export import read_results

    data = tmp_path / "data"
    expected = _mixed_folder(data)
    env = worker_env(tmp_path, data, f"sqlite:///{tmp_path / 'results.sqlite'}")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("apogee_id,k_mag,ebv,plx,e_plx\n2M00000001+0000001,9.0,0.05,1.0,0.1\n")
    _specq(env, "run", "--demo-weights", "--draws", "2", "--seed", "1", "--quiet", "--catalog", catalog,
           "-o", tmp_path / "out-{pipeline}.csv", data, cwd=data)
    for pipeline, n in expected.items():
        table = read_results(tmp_path / f"out-{pipeline}.csv")
        keys = [(p, h, r) for p, h, r in zip(table["path"], table["hdu"], table["row"])]
        assert len(table) == n and len(set(keys)) == n, (pipeline, keys)  # one row per spectrum
        if pipeline.startswith("bossnet"):
            assert np.isfinite(np.asarray(table["teff"], float)).all(), pipeline
    rvs = read_results(tmp_path / "out-bossnet_gaia_rvs.csv")
    assert sorted(rvs["gaia_dr3_source_id"]) == sorted(int(i) for i in inputs()["gaia_rvs/source_id"])
    lamost = read_results(tmp_path / "out-bossnet_lamost.csv")
    assert "bn_v_r" in lamost.colnames and sorted(lamost["hdu"]) == [0, 1]  # DR7 HDU 0, DR8 HDU 1


def test_weights_install_of_a_clone_installs_every_source_found(tmp_path):
    import torch

    from workers.weights.formats import save_chunks
    from workers.weights.inspection import identify

    clone, manifests = tmp_path / "BOSSNet", tmp_path / "manifests"
    manifests.mkdir()
    for pipeline, folder in (("bossnet", "model_boss"), ("bossnet_apogee", "model_apogee"),
                             ("bossnet_gaia_xp", "model_gaia_xp")):
        g = torch.Generator().manual_seed(len(folder))
        chunks = save_chunks({"first_conv.conv_layer.weight": torch.randn(64, generator=g)}, clone / "bossnet" / folder)
        files, _ = identify([chunks / f"model_chunk_{i}" for i in range(10)])
        real = (ROOT / "weights" / f"{pipeline}.toml").read_text()
        described = "".join(f'[[files]]\nname = "{f.name}"\nsize = {f.size}\ngit_blob = "{f.git_blob}"\n\n'
                            for f in files)
        (manifests / f"{pipeline}.toml").write_text(real[:real.index("[[files]]")] + described)
    shutil.copy(ROOT / "weights" / "bossnet_gaia_rvs.toml", manifests)  # published, absent from this clone
    env = worker_env(tmp_path, tmp_path, f"sqlite:///{tmp_path / 'r.sqlite'}", SPECQ_WEIGHTS_DIR=tmp_path / "w")
    out = _specq(env, "weights", "--manifests", manifests, "install", clone)
    for pipeline in ("bossnet", "bossnet_apogee", "bossnet_gaia_xp"):
        assert f"{pipeline}: installed" in out.stdout and "(published" in out.stdout
        assert (tmp_path / "w" / pipeline / "model_chunk_9").exists()
    assert "bossnet_gaia_rvs" not in out.stdout
