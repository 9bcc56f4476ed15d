"""BossNet on LAMOST low-resolution spectra (DR7 and DR8 layouts): the BOSS model, BOSS's preprocessing.

:mod:`~workers.bossnet_lamost.spec` declares the pipeline; the readers are
:mod:`workers.readers.lamost`.
"""
