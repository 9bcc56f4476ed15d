"""The class that runs BossNet on LAMOST spectra: BossNet's engine and preprocessing, unchanged."""
from workers.bossnet.pipeline import BossNetPipeline
from workers.bossnet_lamost.spec import SPEC


class BossNetLamostPipeline(BossNetPipeline):
    """BossNet's BOSS model on LAMOST DR7/DR8 spectra (see :mod:`workers.bossnet_lamost.spec`)."""

    spec = SPEC
    source = "boss"
