"""Weights manifests: what a pipeline's published weights are, read without torch.

A manifest (``weights/<pipeline>.toml`` at the top of the repository, installed with specq)
says what a pipeline's published weights are: their format (ten ``model_chunk_*`` files, or
one ``.pt``), the files with their identities (git blob id, size, sha256 where known) and
where the published copies live.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from workers.weights.formats import WeightsError

MANIFEST_DIR_ENV = "SPECQ_WEIGHTS_MANIFESTS"
WEIGHTS_LAYOUTS = ("chunks", "pt")


@dataclass(frozen=True)
class ExpectedFile:
    """One published file: its name and whatever identity the manifest records for it."""

    name: str
    size: int | None = None
    git_blob: str | None = None
    sha256: str | None = None

    @property
    def has_identity(self) -> bool:
        return bool(self.git_blob or self.sha256)


@dataclass(frozen=True)
class Manifest:
    """What a pipeline's published weights are (one ``<pipeline>.toml``).

    Attributes
    ----------
    pipeline : str
    title : str
    format : {"chunks", "pt"}
        The published form.
    files : tuple of ExpectedFile
        The published files in order (``model_chunk_0`` … for chunks).
    install_as : dict
        Format → the name the weights get inside the weights folder.
    keys : tuple of str
        Tensor names a file of these weights holds (recognises a ``.pt`` without torch).
    state_key : str or None
        Key of the state dict inside the saved dict, if any.
    published : tuple of dict
        Where the published copies live (repository, path, …), for people.
    identity : str
        How the identity of an installed copy is established, for people.
    path : Path
        The manifest file itself.
    """

    pipeline: str
    title: str
    format: str
    files: tuple[ExpectedFile, ...]
    install_as: dict
    keys: tuple[str, ...] = ()
    state_key: str | None = None
    published: tuple[dict, ...] = ()
    identity: str = ""
    path: Path | None = None

    @property
    def has_identity(self) -> bool:
        """True when the published files' identities are known (not only their names)."""
        return bool(self.files) and all(f.has_identity for f in self.files)


def _repository_manifest_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"


def _installed_manifest_dir() -> Path | None:
    """Where pip put the manifests of an installed (non-editable) specq: ``share/specq/weights``."""
    from importlib import metadata

    try:
        files = metadata.distribution("specq").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.parts[-3:-1] == ("specq", "weights") and f.name.endswith(".toml"):
            return Path(f.locate()).resolve().parent
    return None


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot hold manifests (``"no such folder"``, ``"not a folder"``), or None."""
    if folder.is_dir():
        return None
    return "not a folder" if folder.exists() else "no such folder"


def manifest_dirs(override: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``<pipeline>.toml``, first found wins.

    ``override`` (or ``SPECQ_WEIGHTS_MANIFESTS``), then the repository's ``weights/`` (a
    clone or an editable install), then the copy installed with the package.
    """
    override = override or os.environ.get(MANIFEST_DIR_ENV) or None
    if override:
        folder = Path(override).expanduser()
        problem = folder_problem(folder)
        if problem:  # an override is exact: no silent fallback, so a mistyped one is an error
            raise WeightsError(f"weights manifests folder {override} (weights_manifests, SPECQ_WEIGHTS_MANIFESTS): "
                               f"{problem}")
        return [folder]
    dirs = [_repository_manifest_dir()]
    installed = _installed_manifest_dir()
    if installed is not None:
        dirs.append(installed)
    return dirs


def parse_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check one manifest file.

    Raises
    ------
    WeightsError
        Unreadable TOML, or a field missing or of the wrong kind.
    """
    path = Path(path)
    return _manifest(_read_toml(path), path)


def _manifest(data: dict, path: Path) -> Manifest:
    """The manifest a TOML file's table declares; a WeightsError naming the file and the field at fault."""
    try:
        fmt = data["format"]
        if fmt not in WEIGHTS_LAYOUTS:
            raise ValueError(f"format must be one of {WEIGHTS_LAYOUTS}, not {fmt!r}")
        files = tuple(ExpectedFile(name=str(f["name"]), size=None if f.get("size") is None else int(f["size"]),
                                   git_blob=f.get("git_blob") or None, sha256=f.get("sha256") or None)
                      for f in data.get("files", []))
        install_as = dict(data["install"])
        if fmt not in install_as:
            raise ValueError(f"[install] names no place for the published format {fmt!r}")
        return Manifest(pipeline=str(data["pipeline"]), title=str(data.get("title", data["pipeline"])), format=fmt,
                        files=files, install_as=install_as, keys=tuple(data.get("keys", ())),
                        state_key=data.get("state_key") or None, published=tuple(data.get("published", ())),
                        identity=str(data.get("identity", "")).strip(), path=path)
    except KeyError as exc:
        raise WeightsError(f"weights manifest {path}: no {exc.args[0]!r} field (see weights/README.md)") from None
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"weights manifest {path}: {exc}") from None


def _read_toml(path: Path) -> dict:
    """A TOML file's table, or a WeightsError naming the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"weights manifest {path}: {exc}") from exc


def load_manifest(pipeline: str, override: str | os.PathLike | None = None) -> Manifest | None:
    """The manifest of ``pipeline``, or None when no folder has one (a pipeline without published weights)."""
    for folder in manifest_dirs(override):
        path = folder / f"{pipeline}.toml"
        if path.is_file():
            return parse_manifest(path)
    return None


def load_manifests(override: str | os.PathLike | None = None) -> dict[str, Manifest]:
    """Every manifest found, by pipeline (the first folder that has one wins).

    A TOML file with none of a manifest's ``pipeline``, ``format`` and ``files`` fields (a
    ``specq.toml`` or ``pyproject.toml`` kept in the same folder) is passed over.
    """
    out: dict[str, Manifest] = {}
    for folder in manifest_dirs(override):
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            data = _read_toml(path)
            if data.keys() & {"pipeline", "format", "files"}:  # a manifest, complete or not
                m = _manifest(data, path)
                out.setdefault(m.pipeline, m)
    return out

