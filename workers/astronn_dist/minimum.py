"""The least data AstroNN distances answer for (see :mod:`workers.minimum_data`).

Below any of these a spectrum gets a flagged row (``flag_bad``) naming what is missing.
"""
from workers.minimum_data import MinimumData

# The APOGEE apStar grid (Å): three detectors, with gaps between them.
WAVELENGTH_RANGE_A = (15100.0, 17000.0)
# Finite flux values on that grid (8,575 pixels, about 7,500 of them on a detector).
MIN_GOOD_PIXELS = 2000
# Share of the range (in log wavelength) the good pixels must reach: the detectors cover
# about 85 %, so one detector alone is not enough.
MIN_COVERAGE = 0.5

MINIMUM = MinimumData("AstroNN distances", WAVELENGTH_RANGE_A, MIN_GOOD_PIXELS, MIN_COVERAGE)
