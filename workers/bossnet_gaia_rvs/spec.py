"""BossNet on Gaia RVS, declared for the registry (torch-free).

Input: one row of a Gaia DR3 RVS mean-spectrum table (``source_id``, ``flux``,
``flux_error``; 2,401 pixels), ECSV as the archive serves it, or FITS/Parquet with the same
columns. NaN flux and errors become 1; the flux goes to the network unscaled. Rows carry
``gaia_dr3_source_id``.
"""
from workers.bossnet.schema import PRECISIONS, bossnet_schema
from workers.bossnet.demo import DemoWeights
from workers.bossnet.spec import CONV_OPTION
from workers.registry import PipelineSpec

SCHEMA = bossnet_schema(
    "bossnet_gaia_rvs", "BossNetGaiaRVS",
    "Stellar parameters from the BossNet network trained on Gaia DR3 RVS mean spectra (the "
    "authors' model_gaia_rvs), given the 2401-pixel normalised flux as it is. Reported values are "
    "the prediction for the noise-free spectrum; uncertainties are the standard deviation over "
    "Monte Carlo noise draws from the flux error.",
    v_r=False,
)

DEMO_WEIGHTS = DemoWeights("gaia_rvs")

SPEC = PipelineSpec(
    name="bossnet_gaia_rvs",
    title="BossNet (Gaia RVS)",
    instrument="gaia_rvs",
    schema=SCHEMA,
    runner="workers.bossnet_gaia_rvs.pipeline:BossNetGaiaRvsPipeline",
    queue="gpu",
    chunk_size=128,  # a network a sixth of BOSS's size
    weights=("bossnet_gaia_rvs", "model_gaia_rvs"),
    default_draws=20,
    precisions=PRECISIONS,
    compare=("teff", "logg", "fe_h"),
    baseline="workers.bossnet.fixed_grid:run_baseline",
    summary_columns=("path", "row", "gaia_dr3_source_id", "teff", "logg", "fe_h", "result_flags"),
    plots="workers.bossnet.plots:STELLAR_PLOTS",
    demo_weights="workers.bossnet_gaia_rvs.spec:DEMO_WEIGHTS",
    options=(CONV_OPTION,),
    chunk_folders=("model_gaia_rvs",),
)
