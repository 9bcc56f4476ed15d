"""``specq results plot``: each pipeline's diagrams of a table, as PNG files.

The diagrams are the pipeline's own, declared on its spec (``PipelineSpec.plots``, drawn
with :mod:`workers.plots`); a pipeline that declares none gets no files.
"""
from __future__ import annotations

from pathlib import Path


def plot_table(table, pipeline: str, out_dir: Path, show_bad: bool = False) -> list[Path]:
    """Write ``pipeline``'s PNG files for ``table`` (exported layout) into ``out_dir``.

    Returns
    -------
    list of Path
        ``{out_dir}/{pipeline}-{plot}.png``, one per plot the pipeline declares (none
        when it declares none).
    """
    from workers import plots, registry

    written = []
    for name, draw in registry.get(pipeline).load_plots():
        out = Path(out_dir) / f"{pipeline}-{name}.png"
        plots.save(draw(table, show_bad), out)
        written.append(out)
    return written
