"""The class that runs BossNet on APOGEE spectra: BossNet's engine with the APOGEE model and input rule."""
from workers.bossnet.fixed_grid import FixedGridPipeline
from workers.bossnet_apogee.spec import SPEC


class BossNetApogeePipeline(FixedGridPipeline):
    """BossNet on combined APOGEE spectra (see :mod:`workers.bossnet_apogee.spec`)."""

    spec = SPEC
    source = "apogee"
