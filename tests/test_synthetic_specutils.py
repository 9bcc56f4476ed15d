"""Synthetic files read by another tool: specutils' SDSS-V loaders take every one as a real file.

specutils is in the ``test`` extra; its loaders rely on what real files carry (``DATASUM``
marking an empty HDU, ``V_ASTRA`` and ``SDSS_ID`` in HDU 0, spec-lite's ``TELESCOP`` and
``VERS2D``, apStar's ``BUNIT``), so a file specutils reads right is a file laid out as real.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits

from specq.testing.synthetic import make_dataset
from workers.readers import read_spectrum

import specutils


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, make_dataset(root, n_boss=8, n_apogee=5, seed=11)


def test_every_file_has_valid_checksums_but_apstar_none_as_its_data_model(dataset):
    root, truth = dataset
    formats = dict(zip(truth["path"], truth["format"]))
    assert "apStar" in formats.values()
    for path in sorted(formats):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy warns on a checksum that does not verify
            with fits.open(root / path, checksum=True) as hdul:
                for hdu in hdul:
                    if formats[path] == "apStar":  # apStar.yaml has no DATASUM or CHECKSUM card
                        assert "DATASUM" not in hdu.header and "CHECKSUM" not in hdu.header
                        continue
                    assert hdu.header["DATASUM"] == ("0" if hdu.size == 0 else hdu.header["DATASUM"])
                    assert len(hdu.header["CHECKSUM"]) == 16
                    hdu.data  # noqa: B018 (reading the data verifies DATASUM)


@pytest.mark.parametrize("product,loader", [("spec-lite", "SDSS-V spec"), ("mwmVisit", "SDSS-V mwm"),
                                            ("mwmStar", "SDSS-V mwm")])
def test_specutils_reads_every_synthetic_boss_and_mwm_file(dataset, product, loader):
    from specutils import SpectrumList

    root, truth = dataset
    rows = truth[truth["format"] == product]
    assert len(rows), f"the data set has no {product} file"
    for path in sorted(set(rows["path"])):
        spectra = SpectrumList.read(root / path, format=loader)
        mine = rows[rows["path"] == path]
        # One specutils spectrum per non-empty HDU; its rows are the file's spectra.
        fluxes = [np.atleast_2d(s.flux.value) for s in spectra]
        assert sum(f.shape[0] for f in fluxes) >= len(mine)
        for row in mine:
            ours = read_spectrum(root / path, int(row["hdu"]), int(row["row"]))
            assert any(np.array_equal(f[i], ours.flux) for f in fluxes for i in range(f.shape[0])), \
                f"{path} HDU {row['hdu']} row {row['row']}: specutils reads other fluxes"


def test_an_apstar_file_written_with_checksums_verifies(tmp_path):
    from specq.testing.synthetic import write_apstar

    path = tmp_path / "apStar-1.0-apo25m-2M00000001+0000001.fits"
    write_apstar(path, teff=4800, logg=2.5, fe_h=0.0, fakemag=50.0, snr=80.0, seed=3, nvisits=2, checksums=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdul:
            for hdu in hdul:
                assert len(hdu.header["CHECKSUM"]) == 16 and "DATASUM" in hdu.header
                hdu.data  # noqa: B018 (reading the data verifies DATASUM)
