"""BossNet on LAMOST, declared for the registry (torch-free).

Input: a LAMOST DR7 (primary image rows flux, ivar, wavelength) or DR8 (HDU 1 cells FLUX,
IVAR, WAVELENGTH) spectrum, told apart by the file's structure. The network, weights,
statistics and preprocessing are BOSS's: interpolated onto 3,900 points from 3,800 to
8,900 Å, then log-scaled.
"""
from workers.bossnet.schema import PRECISIONS, bossnet_schema
from workers.bossnet.demo import DemoWeights
from workers.bossnet.spec import CONV_OPTION
from workers.registry import PipelineSpec

SCHEMA = bossnet_schema(
    "bossnet_lamost", "BossNetLamost",
    "Stellar parameters from BossNet's BOSS model applied to LAMOST low-resolution spectra "
    "(DR7 and DR8 layouts), interpolated onto a uniform 3800–8900 Å grid and log-scaled. "
    "Reported values are the prediction for the noise-free spectrum; uncertainties are the "
    "standard deviation over Monte Carlo noise draws of the spectrum.",
    v_r=True,
)

DEMO_WEIGHTS = DemoWeights("boss")

SPEC = PipelineSpec(
    name="bossnet_lamost",
    title="BossNet (LAMOST)",
    instrument="lamost",
    schema=SCHEMA,
    runner="workers.bossnet_lamost.pipeline:BossNetLamostPipeline",
    queue="gpu",
    chunk_size=32,
    # The BOSS model: the same weights as bossnet's.
    weights=("bossnet", "model_boss", "deconstructed_model", "bossnet.pt"),
    default_draws=20,
    precisions=PRECISIONS,
    compare=("teff", "logg", "fe_h", "bn_v_r"),
    baseline="workers.bossnet.baseline:run_baseline",  # BOSS's: the same preprocessing and model
    summary_columns=("path", "hdu", "row", "teff", "logg", "fe_h", "bn_v_r", "result_flags"),
    plots="workers.bossnet.plots:PLOTS",
    demo_weights="workers.bossnet_lamost.spec:DEMO_WEIGHTS",
    options=(CONV_OPTION,),
)
