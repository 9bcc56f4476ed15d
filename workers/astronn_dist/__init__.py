"""AstroNN distances: APOGEE coadded spectra → Ks pseudo-luminosity → distance.

Modules: :mod:`~workers.astronn_dist.spec` and :mod:`~workers.astronn_dist.schema` (what
the registry reads; no torch), :mod:`~workers.astronn_dist.pipeline`
(:class:`AstroNNDistPipeline`), :mod:`~workers.astronn_dist.network` (the network and its
weights), :mod:`~workers.astronn_dist.photometry` (each star's Ks, E(B−V) and parallax) and
:mod:`~workers.astronn_dist.baseline` (the one-spectrum-at-a-time yardstick).

Importing the package is cheap: torch and astroNN load only with the modules that need them.
"""
