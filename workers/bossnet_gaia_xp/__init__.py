"""BossNet on Gaia DR3 XP continuous spectra (the authors' Gaia XP model): Teff, log g, [Fe/H] from BP/RP coefficients.

:mod:`~workers.bossnet_gaia_xp.spec` declares the pipeline; the reader is :mod:`workers.readers.gaia`.
"""
