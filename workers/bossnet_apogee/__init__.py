"""BossNet on APOGEE spectra (the authors' APOGEE model): Teff, log g, [Fe/H] from apStar and mwmStar spectra.

The network is BossNet's (:mod:`workers.bossnet`), built from the APOGEE model's arguments;
:mod:`~workers.bossnet_apogee.spec` declares the pipeline.
"""
