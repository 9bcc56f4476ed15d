"""Installing weights: check a copy against its manifest, copy it into the weights folder.

``specq weights install`` copies checked weights into the weights folder
(``SPECQ_WEIGHTS_DIR``) with an *install record* (``<pipeline>.install.json``: every file's
size, git blob id and sha256), which later checks compare the installed copy with.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from workers.weights.formats import CHUNK_PATTERN, DEMO_MARKER, WeightsError
from workers.weights.inspection import FileIdentity, identify, inspect, locate, torch_file_keys
from workers.weights.manifest import Manifest, load_manifest, load_manifests, manifest_dirs

RECORD_SUFFIX = ".install.json"


def record_path(folder: str | os.PathLike, pipeline: str) -> Path:
    return Path(folder) / f"{pipeline}{RECORD_SUFFIX}"


def read_record(folder: str | os.PathLike, pipeline: str) -> dict | None:
    """The install record of ``pipeline`` in the weights folder, or None."""
    path = record_path(folder, pipeline)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable install record ({exc})") from exc


def find_installed(folder: str | os.PathLike | None, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (names inside the weights folder) that exists, or None."""
    if folder is None:
        return None
    for name in candidates:
        path = Path(folder).expanduser() / name
        if path.exists():
            return path
    return None



@dataclass
class Installed:
    """What :func:`install` did."""

    pipeline: str
    path: Path
    status: str
    sha256: str
    replaced: list[Path]


def _published_folders(manifest: Manifest) -> list[str]:
    """The published chunk folders' paths inside their repositories (``bossnet/model_apogee``)."""
    return [str(p["path"]).strip("/") for p in manifest.published if p.get("path") and "$" not in str(p["path"])]


def _guess_pipeline(path: Path, fmt: str, manifests: dict[str, Manifest]) -> Manifest:
    if fmt == "chunks":
        fits = [m for m in manifests.values() if m.format == "chunks"]
        if len(fits) > 1:  # several sources publish chunk folders: the folder's name tells which
            fits = [m for m in fits if path.name in {Path(p).name for p in _published_folders(m)}
                    or path.name == m.install_as.get("chunks")]
    else:
        fits = []
        for m in manifests.values():
            found = torch_file_keys(path, m.keys) if m.keys else None
            if found is not None and found == set(m.keys):
                fits.append(m)
    if len(fits) == 1:
        return fits[0]
    options = ", ".join(sorted(manifests)) or "none found"
    raise WeightsError(f"{path}: cannot tell which pipeline these weights are for; name it with --pipeline "
                       f"({options})")


def install(source: str | os.PathLike, folder: str | os.PathLike, pipeline: str | None = None,
            manifests_dir: str | os.PathLike | None = None, allow_unpublished: bool = False) -> Installed:
    """Check weights against their manifest and copy them into the weights folder.

    Parameters
    ----------
    source : path-like
        A ten-chunk folder, a ``.pt``, or a clone of the published repository.
    folder : path-like
        The weights folder (``settings.weights_cache``).
    pipeline : str, optional
        Which pipeline; guessed from the files when None.
    manifests_dir : path-like, optional
        Where the manifests are (default: see :func:`manifest_dirs`).
    allow_unpublished : bool
        Install complete weights that are not the published ones (your own training) as
        unverified, their sha256 recorded. Partial folders are refused all the same.

    Returns
    -------
    Installed

    Raises
    ------
    WeightsError
        A file differs from the manifest (named), a chunk is missing, the source is demo
        weights or not a torch file, or the copy changed while being made.
    """
    path, fmt = locate(source, pipeline)
    if pipeline is None:
        manifest = _guess_pipeline(path, fmt, load_manifests(manifests_dir))
    else:  # the manifest the start-up check and `specq weights verify` read: <pipeline>.toml
        manifest = load_manifest(pipeline, manifests_dir)
        if manifest is None:
            raise WeightsError(f"no weights manifest for pipeline {pipeline!r} in "
                               f"{', '.join(map(str, manifest_dirs(manifests_dir)))}")
    if fmt not in manifest.install_as:
        raise WeightsError(f"{path}: {manifest.pipeline} weights come as {', '.join(manifest.install_as)}, not {fmt}")
    checked = inspect(path, manifest)
    if checked.status == "demo":
        raise WeightsError(f"{path}: demo weights (seeded random, marked {DEMO_MARKER}); nothing to install")
    if checked.problems:
        if checked.incomplete or not allow_unpublished:
            hint = "" if checked.incomplete else " (your own weights? --allow-unpublished installs them as unverified)"
            raise WeightsError(f"refusing to install {manifest.pipeline} weights: "
                               + "; ".join(checked.problems) + hint)
        checked.status, checked.problems = "unverified", []
    if checked.status != "published":
        # Nothing vouches for these bytes: they must at least be one whole torch.save file
        # (a cut chunk is caught here, not when a worker loads it).
        found = torch_file_keys([path / f.name for f in checked.files] if fmt == "chunks" else path, manifest.keys)
        if found is None:
            raise WeightsError(f"refusing to install {path}: not a torch.save file")
        if manifest.keys and found != set(manifest.keys):
            raise WeightsError(f"refusing to install {path}: lacks {manifest.pipeline} tensors "
                               f"{sorted(set(manifest.keys) - found)}")

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    name = manifest.install_as[fmt]
    final = folder / name
    tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if fmt == "chunks":
            tmp.mkdir()
            targets = [tmp / f.name for f in checked.files]
            for f, target in zip(checked.files, targets):
                shutil.copyfile(path / f.name, target)
        else:
            shutil.copyfile(path, tmp)
            targets = [tmp]
        copied, sha = identify(targets)
        if [(c.size, c.sha256) for c in copied] != [(f.size, f.sha256) for f in checked.files]:
            raise WeightsError(f"{path}: changed while being copied; install again")
        replaced = _replace(final, tmp, [folder / n for n in set(manifest.install_as.values()) if n != name])
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    record = {
        "pipeline": manifest.pipeline, "installed": name, "format": fmt, "status": checked.status,
        "sha256": sha, "files": [f.as_dict() for f in copied_as(copied, final)], "source": str(Path(path).resolve()),
        "manifest": str(manifest.path), "installed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(record_path(folder, manifest.pipeline), record)
    return Installed(manifest.pipeline, final, checked.status, sha, replaced)


def copied_as(copied: Sequence[FileIdentity], final: Path) -> list[FileIdentity]:
    """The copies' identities under their installed names (a ``.pt`` takes the installed file's name)."""
    if final.suffix in (".pt", ".pth") and len(copied) == 1:
        c = copied[0]
        return [FileIdentity(final.name, c.size, c.git_blob, c.sha256)]
    return list(copied)


def _replace(final: Path, new: Path, others: Sequence[Path]) -> list[Path]:
    """Put ``new`` at ``final``; remove the pipeline's weights under its other names. Returns what went."""
    gone = []
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
    if final.exists():
        final.rename(old)
        gone.append(final)
    new.rename(final)
    for p in [old, *others]:
        # A link (to SDSS's folder, say) goes, never what it points to: rmtree refuses links.
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            continue
        if p != old:
            gone.append(p)
    return gone


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)



def install_clone(source: str | os.PathLike, folder: str | os.PathLike,
                  manifests_dir: str | os.PathLike | None = None,
                  allow_unpublished: bool = False) -> tuple[list[Installed], list[str]]:
    """Install every pipeline's chunks found in a clone of a published repository.

    A manifest's ``[[published]]`` paths (``bossnet/model_apogee/`` …) are looked for inside
    ``source``; each one found holding chunks is installed as :func:`install` does.

    Returns
    -------
    installed : list of Installed
        Empty when ``source`` holds none of the published folders.
    refused : list of str
        Why each folder found but not installed was refused (one failing source does not
        stop the others).
    """
    source = Path(source).expanduser()
    done, refused = [], []
    for manifest in load_manifests(manifests_dir).values():
        for rel in _published_folders(manifest):
            candidate = source / rel
            if candidate.is_dir() and any(CHUNK_PATTERN.match(p.name) for p in candidate.iterdir()):
                try:
                    done.append(install(candidate, folder, pipeline=manifest.pipeline, manifests_dir=manifests_dir,
                                        allow_unpublished=allow_unpublished))
                except (WeightsError, OSError) as exc:
                    refused.append(f"{manifest.pipeline}: {exc}")
                break
    return done, refused
