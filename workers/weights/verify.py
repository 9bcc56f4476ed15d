"""Verifying installed weights: the start-up check of a worker, ``specq weights list/verify``.

A worker (or ``specq run``) checks a pipeline's installed weights before it takes work, and
stops with one line when there are none or they are partial or changed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from workers.weights.formats import WeightsError, is_demo
from workers.weights.inspection import Inspection, inspect
from workers.weights.install import find_installed, read_record
from workers.weights.manifest import load_manifest


class NoWeightsError(WeightsError):
    """No published weights are installed, and demo weights were not asked for."""


def _record_for(folder: Path, pipeline: str, path: Path) -> dict | None:
    record = read_record(folder, pipeline)
    return record if record is not None and record.get("installed") == path.name else None


def no_weights_message(pipeline: str, folder: Path | None, candidates: Sequence[str],
                       manifests_dir: str | os.PathLike | None = None) -> str:
    """The one line a run or a worker stops with when no weights are installed."""
    try:
        manifest = load_manifest(pipeline, manifests_dir)
    except WeightsError:
        manifest = None
    where = ""
    if manifest is not None and manifest.published:
        first = manifest.published[0]
        where = f" (published: {first.get('repository', '')} {first.get('path', '')})".replace("( ", "(")
    return (f"no published weights for {pipeline}: looked in {folder} for {', '.join(candidates)}. "
            f"Install them with `specq weights install PATH`{where}, "
            f"or ask for demo weights with --demo-weights or SPECQ_DEMO_WEIGHTS=1")


def check_ready(pipeline: str, settings, candidates: Sequence[str]) -> Inspection | None:
    """Check a pipeline's installed weights before taking work; None: demo weights (asked for), or none needed.

    Parameters
    ----------
    pipeline : str
    settings : workers.settings.Settings
        ``weights_cache`` (the weights folder), ``demo_weights``, ``weights_manifests``.
    candidates : sequence of str
        Names looked for in the weights folder, first found wins.

    Raises
    ------
    NoWeightsError
        Nothing installed and demo weights not asked for.
    WeightsError
        The installed weights are partial or changed: one line naming the file.
    """
    if not candidates:
        return None  # a pipeline that needs no weights
    folder = Path(settings.weights_cache)
    path = find_installed(folder, candidates)
    if path is None:
        if settings.demo_weights:
            return None
        raise NoWeightsError(no_weights_message(pipeline, folder, candidates, settings.weights_manifests))
    manifest = load_manifest(pipeline, settings.weights_manifests)
    result = inspect(path, manifest, _record_for(folder, pipeline, path))
    if result.problems:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise WeightsError(f"{pipeline} weights are partial or changed: {result.problems[0]}{more}. "
                           f"Reinstall them with `specq weights install PATH`, or check with `specq weights verify`")
    return result



@dataclass
class Entry:
    """One pipeline's weights in the weights folder, for ``specq weights list/verify``."""

    pipeline: str
    path: Path | None
    inspection: Inspection | None


def survey(settings, candidates: dict[str, Sequence[str]]) -> list[Entry]:
    """Every pipeline's installed weights (or their absence), and the demo weights present.

    Parameters
    ----------
    settings : workers.settings.Settings
    candidates : dict
        Pipeline → names looked for in the weights folder.
    """
    folder = Path(settings.weights_cache)
    out = []
    for pipeline, names in candidates.items():
        path = find_installed(folder, names)
        manifest = load_manifest(pipeline, settings.weights_manifests)
        record = _record_for(folder, pipeline, path) if path is not None else None
        if path is None:
            out.append(Entry(pipeline, None, None))
        else:
            out.append(Entry(pipeline, path, inspect(path, manifest, record)))
        # A pipeline's demo weights: <pipeline>-demo…, or for BossNet on another source
        # bossnet-<source>-demo (bossnet_gaia_rvs → bossnet-gaia_rvs-demo); a pipeline that
        # runs another's network (bossnet_lamost: BOSS's) uses that one's demo weights.
        stems = {pipeline, *(Path(n).stem for n in names[:1])}
        patterns = {f"{stem.replace('_', '-', 1) if dashed else stem}-demo*" for stem in stems for dashed in (0, 1)}
        demos = {path for pattern in patterns for path in folder.glob(pattern)} if folder.is_dir() else set()
        for demo in sorted(demos):
            if is_demo(demo):
                out.append(Entry(pipeline, demo, inspect(demo, manifest)))
    return out


def render_survey(entries: Sequence[Entry], folder: Path) -> str:
    """Lines for ``specq weights list`` / ``verify``."""
    lines = [f"weights folder: {folder}"]
    width = max([13, *(len(e.pipeline) for e in entries)])
    for e in entries:
        if e.path is None:
            lines.append(f"{e.pipeline:<{width}} not installed")
            continue
        i = e.inspection
        shown = f"{e.path.name}{'/' if e.path.is_dir() else ''}"
        if i.problems:
            lines.append(f"{e.pipeline:<{width}} MISMATCH    {shown}")
            lines += [f"    {p}" for p in i.problems]
            continue
        note = f"  ({i.note})" if i.note else ""
        lines.append(f"{e.pipeline:<{width}} {i.status:<11} {shown:<22} sha256 {i.sha256}{note}")
    return "\n".join(lines)


def main_check(pipeline_names: Iterable[str], settings, candidates: dict[str, Sequence[str]],
               stream=None) -> int:
    """The start-up check of ``specq run``/``specq worker``: 0 when fit, else 2 after one line on
    ``stream`` (default: stderr)."""
    for name in pipeline_names:
        try:
            check_ready(name, settings, candidates[name])
        except WeightsError as exc:
            print(f"specq: {exc}", file=stream or sys.stderr)
            return 2
    return 0
