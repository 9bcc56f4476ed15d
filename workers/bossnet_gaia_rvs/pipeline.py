"""The class that runs BossNet on Gaia RVS spectra: BossNet's engine with the RVS model, flux unscaled."""
from workers.bossnet.fixed_grid import FixedGridPipeline
from workers.bossnet_gaia_rvs.spec import SPEC


class BossNetGaiaRvsPipeline(FixedGridPipeline):
    """BossNet on Gaia DR3 RVS mean spectra (see :mod:`workers.bossnet_gaia_rvs.spec`)."""

    spec = SPEC
    source = "gaia_rvs"
    # A network an eighth of BOSS's width: 672 rows (at 20 draws) share each read of the
    # linear weights; measured 1.3-2.6x the rate of 8 spectra on a 2-core CPU. Its
    # convolutions take ~37 rows a pass on a CPU (workers.bossnet.network.FFT_CORE_BYTES).
    cpu_batch_spectra = 32
    # Its small tensors leave the cores gaps: the next batch is prepared in them (6-8 % more
    # spectra a second on a 2-core CPU).
    prepares_ahead_on_cpu = True
