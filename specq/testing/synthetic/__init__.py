"""Synthetic stellar spectra written in the SDSS file formats, with known labels.

The demo, the tests and the benchmarks need spectra without downloading SDSS data.
This package makes plausible (not science-grade) spectra whose lines depend on
Teff, log g and [Fe/H] (:mod:`.physics`), and writes them exactly in the layouts of the
SDSS data models (:mod:`.spec_lite`, :mod:`.mwm`, :mod:`.apstar`: HDUs, column names,
dtypes, dimensions, the header keywords the readers use, and ``DATASUM``/``CHECKSUM`` in
every HDU but an apStar file's, whose data model declares none, :mod:`.fitsfile`), so the readers, specq's and others', see real files. Each
file carries its true labels (:mod:`.truth`); :func:`make_dataset` writes a mixed set.
"""
from specq.testing.synthetic.apstar import write_apstar
from specq.testing.synthetic.dataset import make_dataset
from specq.testing.synthetic.mwm import SYNTHETIC_GAIA_BASE, V_ASTRA, write_mwm_star, write_mwm_visit
from specq.testing.synthetic.physics import (APOGEE_BADERR, APOGEE_BADPIX, APOGEE_CDELT, APOGEE_CHIPS, APOGEE_CRVAL,
                                             APOGEE_NPIX, APOGEE_SIG_SKYLINE, BOSS_BRIGHTSKY, BOSS_CDELT, BOSS_CRVAL,
                                             BOSS_NPIX, C_KMS, apogee_flux, apogee_on_chip, apogee_wavelength,
                                             boss_flux, boss_wavelength)
from specq.testing.synthetic.spec_lite import write_spec_lite
from specq.testing.synthetic.truth import read_truth, truth_from_headers

__all__ = ["APOGEE_BADERR", "APOGEE_BADPIX", "APOGEE_CDELT", "APOGEE_CHIPS", "APOGEE_CRVAL", "APOGEE_NPIX",
           "APOGEE_SIG_SKYLINE", "BOSS_BRIGHTSKY", "BOSS_CDELT", "BOSS_CRVAL", "BOSS_NPIX", "C_KMS",
           "SYNTHETIC_GAIA_BASE", "V_ASTRA", "apogee_flux", "apogee_on_chip", "apogee_wavelength", "boss_flux",
           "boss_wavelength", "make_dataset", "read_truth", "truth_from_headers", "write_apstar",
           "write_mwm_star", "write_mwm_visit", "write_spec_lite"]
