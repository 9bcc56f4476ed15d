"""The least data BossNet answers for (see :mod:`workers.minimum_data`).

Below any of these a spectrum gets a flagged row (``flag_bad``) naming what is missing.
"""
from workers.minimum_data import MinimumData

# The wavelengths BossNet reads (its input grid, Å).
WAVELENGTH_RANGE_A = (3800.0, 8900.0)
# Finite flux values inside that range: a BOSS coadd has about 3,700 there.
MIN_GOOD_PIXELS = 500
# Share of the range (in log wavelength) the good pixels must reach: a spectrum covering
# 5600 Å and up (about half the range) is still answered, as published.
MIN_COVERAGE = 0.25

MINIMUM = MinimumData("BossNet", WAVELENGTH_RANGE_A, MIN_GOOD_PIXELS, MIN_COVERAGE)
