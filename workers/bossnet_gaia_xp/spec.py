"""BossNet on Gaia XP, declared for the registry (torch-free).

Input: one row of a Gaia DR3 XP continuous-spectrum table: 55 BP and 55 RP coefficients
(BP first), their errors and correlations; ECSV as the archive serves it, or FITS/Parquet
with the same columns. NaN coefficients become 1; the coefficients go to the network
unscaled. The Monte Carlo draws are correlated: each band's covariance is rebuilt from its
errors and correlations, and its Cholesky factor times standard normals is added, BP and
RP drawn separately. Rows carry ``gaia_dr3_source_id``.
"""
from workers.bossnet.schema import PRECISIONS, bossnet_schema
from workers.bossnet.demo import DemoWeights
from workers.bossnet.spec import CONV_OPTION
from workers.registry import PipelineSpec

SCHEMA = bossnet_schema(
    "bossnet_gaia_xp", "BossNetGaiaXP",
    "Stellar parameters from the BossNet network trained on Gaia DR3 XP continuous spectra (the "
    "authors' model_gaia_xp), given the 110 BP and RP coefficients as they are. Reported values are "
    "the prediction for the noise-free coefficients; uncertainties are the standard deviation over "
    "Monte Carlo draws of correlated noise from each band's coefficient covariance.",
    v_r=False,
)

DEMO_WEIGHTS = DemoWeights("gaia_xp")

SPEC = PipelineSpec(
    name="bossnet_gaia_xp",
    title="BossNet (Gaia XP)",
    instrument="gaia_xp",
    schema=SCHEMA,
    runner="workers.bossnet_gaia_xp.pipeline:BossNetGaiaXpPipeline",
    queue="gpu",
    chunk_size=256,  # 110 inputs a spectrum: the linear layers dominate
    weights=("bossnet_gaia_xp", "model_gaia_xp"),
    default_draws=20,
    precisions=PRECISIONS,
    compare=("teff", "logg", "fe_h"),
    baseline="workers.bossnet.fixed_grid:run_baseline",
    summary_columns=("path", "row", "gaia_dr3_source_id", "teff", "logg", "fe_h", "result_flags"),
    plots="workers.bossnet.plots:STELLAR_PLOTS",
    demo_weights="workers.bossnet_gaia_xp.spec:DEMO_WEIGHTS",
    options=(CONV_OPTION,),
    chunk_folders=("model_gaia_xp",),
)
