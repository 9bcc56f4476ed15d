"""The pipeline API: what a pipeline's folder imports from specq, in one place.

A pipeline, in the tree (``workers/<name>/``) or outside it (a module named in
``SPECQ_PLUGINS``, or an installed package's ``specq.pipelines`` entry point), imports
from here and from nowhere else in specq:

- :class:`PipelineSpec`, the pipeline's declaration (``SPEC`` in its spec module), and
  :class:`Option`, a command-line option of its own;
- :class:`ResultSchema`, :class:`Field` and :class:`Flag`, its result, declared once;
- :class:`Pipeline`, the class it subclasses (a warm model: ``_predict`` turns
  :class:`Spectrum` objects into rows), and :class:`Options`, the per-call options;
- :func:`row_values`, the row builder: one spectrum's fields and flags, or its error;
- :mod:`plots <workers.plots>`, helpers for the plots it declares.

Every field of :class:`PipelineSpec` beyond name, title, instrument, schema and runner
has a default: a spec written with those five runs through every command. See
``docs/adding-a-pipeline.md``. Importing this module loads numpy, not torch.
"""
from workers import plots
from workers.pipeline import Options, Pipeline
from workers.registry import Option, PipelineSpec
from workers.row import values as row_values
from workers.schema import Field, Flag, ResultSchema
from workers.spectrum import Spectrum

__all__ = ["Field", "Flag", "Option", "Options", "Pipeline", "PipelineSpec", "ResultSchema", "Spectrum", "plots",
           "row_values"]
