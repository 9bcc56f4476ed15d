"""BossNet on Gaia DR3 RVS mean spectra (the authors' Gaia RVS model): Teff, log g, [Fe/H].

:mod:`~workers.bossnet_gaia_rvs.spec` declares the pipeline; the reader is :mod:`workers.readers.gaia`.
"""
