"""The class that runs BossNet on Gaia RVS spectra: BossNet's engine with the RVS model, flux unscaled."""
from workers.bossnet.fixed_grid import FixedGridPipeline
from workers.bossnet_gaia_rvs.spec import SPEC


class BossNetGaiaRvsPipeline(FixedGridPipeline):
    """BossNet on Gaia DR3 RVS mean spectra (see :mod:`workers.bossnet_gaia_rvs.spec`)."""

    spec = SPEC
    source = "gaia_rvs"
