"""The null pipelines, declared for the registry (``SPECQ_PLUGINS=workers.null.spec``).

Their schemas copy the fields of the pipeline they stand in for, so a row costs what that
pipeline's row costs to build and to write.
"""
from __future__ import annotations

from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.bossnet.schema import BOSSNET_SCHEMA
from workers.registry import PipelineSpec
from workers.schema import Flag, ResultSchema

FAILED = "flag_failed"


def _schema(name: str, like: ResultSchema) -> ResultSchema:
    """``like``'s fields under pipeline ``name``, with one flag: the spectrum failed."""
    return ResultSchema(pipeline=name, exception_flag=FAILED,
                        description=f"The null model: {like.pipeline}'s fields, zeros, no network.",
                        fields=tuple(like.fields), extra_fields=tuple(like.extra_fields),
                        flags=(Flag(FAILED, 0, "The spectrum could not be processed"),),
                        warn_bits=(), bad_bits=(FAILED,))


NULL_BOSS = PipelineSpec(
    name="null_boss", title="Null model (BOSS)", instrument="boss",
    schema=_schema("null_boss", BOSSNET_SCHEMA), runner="workers.null.pipeline:NullPipeline",
    queue="null", chunk_size=256,
)
NULL_APOGEE = PipelineSpec(
    name="null_apogee", title="Null model (APOGEE)", instrument="apogee",
    schema=_schema("null_apogee", ASTRONN_DIST_SCHEMA), runner="workers.null.pipeline:NullApogeePipeline",
    queue="null", chunk_size=256, coadds_only=True,
)
SPECS = (NULL_BOSS, NULL_APOGEE)
