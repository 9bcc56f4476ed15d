"""BossNet, declared for the registry (torch-free): what it takes, where it runs, what it writes."""
from workers.bossnet.schema import BOSSNET_SCHEMA, PRECISIONS
from workers.registry import Option, PipelineSpec

# The network's convolution, for `specq bench`: every pipeline built on BossNet's network declares it.
CONV_OPTION = Option("--conv", "conv_impl", "BossNet convolution implementation", choices=("fft", "direct", "auto"),
                     commands=("bench",))

SPEC = PipelineSpec(
    name="bossnet",
    title="BossNet",
    instrument="boss",
    schema=BOSSNET_SCHEMA,
    runner="workers.bossnet.pipeline:BossNetPipeline",
    queue="gpu",
    chunk_size=32,  # ~1.5 s of work a message on a 2-core CPU
    # The ten-chunk folder as hutchresearch/BOSSNet (model_boss/) or SDSS
    # (deconstructed_model/) ship it, or one .pt.
    weights=("bossnet", "model_boss", "deconstructed_model", "bossnet.pt"),
    default_draws=20,
    precisions=PRECISIONS,
    compare=("teff", "logg", "fe_h", "bn_v_r"),
    baseline="workers.bossnet.baseline:run_baseline",
    summary_columns=("path", "hdu", "row", "teff", "logg", "fe_h", "bn_v_r", "result_flags"),
    plots="workers.bossnet.plots:PLOTS",
    precision_fields=("teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r"),
    options=(CONV_OPTION,),
    # The chunks inside a clone of hutchresearch/BOSSNet or a copy of SDSS's folder.
    chunk_folders=("model_boss", "bossnet/model_boss", "deconstructed_model"),
    demo_weights="workers.bossnet.weights:demo_weights_path",
)
