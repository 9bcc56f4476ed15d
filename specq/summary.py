"""``specq results summary``: what the result store holds, as text.

The counting happens in the database (:meth:`workers.store.ResultStore.summary`); this
module only lays it out.
"""
from __future__ import annotations

from typing import Any, Mapping

from workers.pipeline import UNLOADED_MODEL_SHA

_ERROR_WIDTH = 100  # characters of an error text shown on its line


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f} %" if whole else "    — "


def render_summary(summary: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any]) -> str:
    """The summary of :meth:`ResultStore.summary` as lines of text.

    Parameters
    ----------
    summary : mapping
        ``{pipeline: counts}`` as :meth:`ResultStore.summary` returns it.
    schemas : mapping
        ``{pipeline: ResultSchema}``, for the flag bits' numbers and descriptions.
    """
    lines: list[str] = []
    for pipeline, counts in summary.items():
        total = counts["rows"]
        lines.append(f"{pipeline}: {total} rows ({counts['last_hour']} in the last hour, "
                     f"{counts['last_day']} in the last 24 h)")
        if not total:
            lines.append("")
            continue
        lines.append("  by model:")
        for sha, demo, n in counts["models"]:
            label = ("no model loaded" if sha == UNLOADED_MODEL_SHA else
                     f"{sha[:16]}…" if sha else "(none)") + (" [DEMO WEIGHTS]" if demo else "")
            lines.append(f"    {label:<40} {n:>9}  {_share(n, total)}")
        lines.append("  flags:")
        schema = schemas[pipeline]
        for flag in schema.flags:
            n = counts["flags"][flag.name]
            lines.append(f"    bit {flag.bit:>2} {flag.name:<28} {n:>9}  {_share(n, total)}")
        for name in ("flag_warn", "flag_bad"):
            lines.append(f"    {name:<35} {counts[name]:>9}  {_share(counts[name], total)}")
        if counts["errors"]:
            lines.append("  most common errors:")
            for text, n in counts["errors"]:
                shown = text if len(text) <= _ERROR_WIDTH else text[:_ERROR_WIDTH - 1] + "…"
                lines.append(f"    {n:>9}  {shown}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
