"""BossNet on APOGEE, declared for the registry (torch-free).

Input: the combined APOGEE spectrum, 8,575 pixels on the apStar log-lambda grid, given to the
network as it is (no interpolation): apStar row 0 of HDU 1 (flux) and HDU 2 (error), or an
mwmStar APOGEE row (error from its ivar). NaN and ±inf become 0, then the flux is
log-scaled. APOGEE visit spectra are not taken.
"""
from workers.bossnet.schema import PRECISIONS, bossnet_schema
from workers.bossnet.demo import DemoWeights
from workers.bossnet.spec import CONV_OPTION
from workers.registry import PipelineSpec

SCHEMA = bossnet_schema(
    "bossnet_apogee", "BossNetApogee",
    "Stellar parameters from the BossNet network trained on APOGEE spectra (the authors' "
    "model_apogee), applied to the combined APOGEE spectrum on its own 8575-pixel grid, "
    "log-scaled. Reported values are the prediction for the noise-free spectrum; uncertainties "
    "are the standard deviation over Monte Carlo noise draws from the flux error.",
    v_r=False,
)

DEMO_WEIGHTS = DemoWeights("apogee")

SPEC = PipelineSpec(
    name="bossnet_apogee",
    title="BossNet (APOGEE)",
    instrument="apogee",
    schema=SCHEMA,
    runner="workers.bossnet_apogee.pipeline:BossNetApogeePipeline",
    queue="gpu",
    chunk_size=32,
    weights=("bossnet_apogee", "model_apogee"),
    default_draws=20,
    precisions=PRECISIONS,
    coadds_only=True,
    compare=("teff", "logg", "fe_h"),
    baseline="workers.bossnet.fixed_grid:run_baseline",
    summary_columns=("path", "hdu", "row", "teff", "logg", "fe_h", "result_flags"),
    plots="workers.bossnet.plots:STELLAR_PLOTS",
    demo_weights="workers.bossnet_apogee.spec:DEMO_WEIGHTS",
    options=(CONV_OPTION,),
    chunk_folders=("model_apogee",),
)
