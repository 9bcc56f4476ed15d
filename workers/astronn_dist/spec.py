"""AstroNN distances, declared for the registry (torch-free): what it takes, where it runs, what it writes."""
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.registry import Option, PipelineSpec

SPEC = PipelineSpec(
    name="astronn_dist",
    title="AstroNN distances",
    instrument="apogee",
    schema=ASTRONN_DIST_SCHEMA,
    runner="workers.astronn_dist.pipeline:AstroNNDistPipeline",
    queue="cpu",
    chunk_size=128,  # ~0.4 s: 25x faster a spectrum than BossNet, so more per message
    weights=("astronn_dist.pt", "astronn_dist"),
    default_draws=100,
    min_draws=1,
    coadds_only=True,
    compare=("L_fakemag", "nn_dist"),
    baseline="workers.astronn_dist.baseline:run_baseline",
    baseline_note="other dropout masks: the two agree in distribution, not value for value",
    summary_columns=("path", "hdu", "k_mag", "L_fakemag", "nn_dist", "nn_dist_err", "result_flags"),
    plots="workers.astronn_dist.plots:PLOTS",
    roofline="workers.astronn_dist.roofline:roofline",
    options=(Option("--catalog", "catalog", "source catalog for AstroNN photometry (CSV, FITS or Parquet)",
                    commands=("run",), setting=True, is_file=True),),
    demo_inputs="workers.astronn_dist.demo:write_catalog",
    # A reference's own photometry wins over the source catalog and the file header.
    message_extras=("k_mag", "ebv", "plx", "e_plx"),
    demo_weights="workers.astronn_dist.network:demo_weights_path",
)
