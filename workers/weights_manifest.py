"""Published weights: manifests, installing, verifying — without torch.

A manifest (``weights/<pipeline>.toml`` at the top of the repository, installed with specq)
says what a pipeline's published weights are: their format (ten ``model_chunk_*`` files, or
one ``.pt``), the files with their identities (git blob id, size, sha256 where known) and
where the published copies live. ``specq weights install`` checks a copy against it and
copies it into the weights folder (``SPECQ_WEIGHTS_DIR``) with an *install record*
(``<pipeline>.install.json``: every file's size, git blob id and sha256), ``verify`` checks
again, and a worker checks before it takes work.

A file is

* **published** when it matches the identities the manifest records;
* **unverified** when the manifest records none for it (AstroNN's ``.pt``), or the install
  was asked to accept weights that are not the published ones: its sha256 is recorded on
  install and checked against from then on;
* **demo** for the seeded random weights (``DEMO_WEIGHTS`` marker), never installed.

Everything here reads bytes and hashes them; nothing imports torch, so producers, the
command line and a Celery worker's parent process can use it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tomllib
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from workers.weights import CHUNK_PATTERN, DEMO_MARKER, WeightsError, is_demo, published_chunk_sizes

MANIFEST_DIR_ENV = "SPECQ_WEIGHTS_MANIFESTS"
RECORD_SUFFIX = ".install.json"
WEIGHTS_LAYOUTS = ("chunks", "pt")
_BLOCK = 1 << 20
# How a torch.save file begins: a zip archive (torch >= 1.6) or a bare pickle (older torch).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class NoWeightsError(WeightsError):
    """No published weights are installed, and demo weights were not asked for."""


# -- manifests ----------------------------------------------------------------------
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
    return Path(__file__).resolve().parents[1] / "weights"


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


def manifest_dirs(override: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``<pipeline>.toml``, first found wins.

    ``override`` (or ``SPECQ_WEIGHTS_MANIFESTS``), then the repository's ``weights/`` (a
    clone or an editable install), then the copy installed with the package.
    """
    override = override or os.environ.get(MANIFEST_DIR_ENV) or None
    if override:
        return [Path(override).expanduser()]  # an override is exact: no silent fallback
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
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"weights manifest {path}: {exc}") from exc
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
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"weights manifest {path}: {exc!r}") from exc


def load_manifest(pipeline: str, override: str | os.PathLike | None = None) -> Manifest | None:
    """The manifest of ``pipeline``, or None when no folder has one (a pipeline without published weights)."""
    for folder in manifest_dirs(override):
        path = folder / f"{pipeline}.toml"
        if path.is_file():
            return parse_manifest(path)
    return None


def load_manifests(override: str | os.PathLike | None = None) -> dict[str, Manifest]:
    """Every manifest found, by pipeline (the first folder that has one wins)."""
    out: dict[str, Manifest] = {}
    for folder in manifest_dirs(override):
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            m = parse_manifest(path)
            out.setdefault(m.pipeline, m)
    return out


# -- identities ---------------------------------------------------------------------
@dataclass(frozen=True)
class FileIdentity:
    """What a file on disk is: name, size, git blob id and sha256."""

    name: str
    size: int
    git_blob: str
    sha256: str

    def as_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "git_blob": self.git_blob, "sha256": self.sha256}


def identify(paths: Sequence[Path]) -> tuple[list[FileIdentity], str]:
    """Each file's identity, and the sha256 of all of them concatenated (what torch reads).

    The concatenated sha256 is the ``model_sha256`` every result row records.
    """
    whole = hashlib.sha256()
    out = []
    for path in paths:
        size = path.stat().st_size
        blob = hashlib.sha1(b"blob %d\0" % size)
        own = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                blob.update(block)
                own.update(block)
                whole.update(block)
        out.append(FileIdentity(path.name, size, blob.hexdigest(), own.hexdigest()))
    return out, whole.hexdigest()


def blob_ids_of_slices(path: Path, sizes: Sequence[int]) -> list[str]:
    """Git blob ids of consecutive slices of one file (a ``.pt`` cut as the chunks were)."""
    out = []
    with open(path, "rb") as fh:
        for size in sizes:
            h = hashlib.sha1(b"blob %d\0" % size)
            left = size
            while left:
                block = fh.read(min(_BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            out.append(h.hexdigest())
    return out


def torch_file_keys(path: Path, keys: Iterable[str]) -> set[str] | None:
    """Which of ``keys`` a ``torch.save`` file names, without torch; None when it is no such file.

    A zip archive holds the pickle (``*/data.pkl``, names only, no tensor data); an old-style
    file begins with the pickle.
    """
    keys = list(keys)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as zf:
                pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pickles:
                    return None
                text = zf.read(pickles[0])
        except (zipfile.BadZipFile, OSError):
            return None
    elif head[:1] == _PICKLE_MAGIC:
        with open(path, "rb") as fh:
            text = fh.read(8 * _BLOCK)
    else:
        return None
    return {k for k in keys if k.encode() in text}


# -- what a path holds ---------------------------------------------------------------
@dataclass
class Inspection:
    """The outcome of checking weights on disk.

    Attributes
    ----------
    path : Path
        The chunk folder or the file.
    format : {"chunks", "pt"}
    status : {"published", "unverified", "demo"}
        See the module's description; meaningful only when ``problems`` is empty.
    sha256 : str
        Of the bytes torch reads (the chunks concatenated): the rows' ``model_sha256``.
    files : list of FileIdentity
    problems : list of str
        Each names a file and what is wrong with it; empty when the weights are fit to use.
    note : str
        Extra information (e.g. why the status is unverified).
    incomplete : bool
        A file is missing (or one too many): the weights cannot be whole, whoever made them.
    """

    path: Path
    format: str
    status: str = "unverified"
    sha256: str = ""
    files: list[FileIdentity] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    note: str = ""
    incomplete: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def locate(source: str | os.PathLike, pipeline: str | None = None) -> tuple[Path, str]:
    """The weights inside ``source``: (chunk folder or file, format).

    ``source`` may be a ``.pt``, a folder of chunks, or a copy of a published repository
    with the chunks in one of the pipeline's ``chunk_folders`` (any pipeline's when None).
    """
    from workers import registry

    specs = [s for name, s in registry.pipelines().items() if pipeline in (None, name)]
    chunk_folders = tuple(dict.fromkeys(folder for spec in specs for folder in spec.chunk_folders))
    source = Path(source).expanduser()
    if source.is_file():
        return source, "pt"
    if not source.is_dir():
        raise WeightsError(f"{source}: no such file or folder")
    for candidate in ("", *chunk_folders):
        folder = source / candidate
        if folder.is_dir() and any(CHUNK_PATTERN.match(p.name) for p in folder.iterdir()):
            return folder, "chunks"
    pts = sorted(p for p in source.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
    if len(pts) == 1:
        return pts[0], "pt"
    if pts:
        raise WeightsError(f"{source}: several weight files ({', '.join(p.name for p in pts)}); name one")
    raise WeightsError(f"{source}: no model_chunk_* files (looked in {', '.join(['.', *chunk_folders])}) "
                       "and no .pt file")


def _chunk_paths(folder: Path, manifest: Manifest | None) -> tuple[list[Path], list[str]]:
    """The chunk files in order, and problems: missing or unexpected chunks, named."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := CHUNK_PATTERN.match(p.name))}
    expected = len(manifest.files) if manifest and manifest.format == "chunks" and manifest.files else \
        (max(found) + 1 if found else 0)
    problems = [f"{folder / f'model_chunk_{i}'}: missing" for i in range(expected) if i not in found]
    problems += [f"{found[i]}: unexpected (the published weights have {expected} chunks)"
                 for i in sorted(found) if i >= expected]
    if not found:
        problems = [f"{folder}: no model_chunk_* files"]
    return [found[i] for i in sorted(found) if i < expected], problems


def _compare(path_of, actual: Sequence[FileIdentity], expected: Sequence[ExpectedFile | dict],
             what: str) -> list[str]:
    """Problems, each naming the file, where ``actual`` differs from ``expected``."""
    problems = []
    for have, want in zip(actual, expected):
        want = want if isinstance(want, dict) else {"size": want.size, "git_blob": want.git_blob,
                                                    "sha256": want.sha256}
        if want.get("size") is not None and have.size != want["size"]:
            problems.append(f"{path_of(have)}: {have.size} bytes, {what} {want['size']}")
        elif want.get("git_blob") and have.git_blob != want["git_blob"]:
            problems.append(f"{path_of(have)}: git blob {have.git_blob}, {what} {want['git_blob']}")
        elif want.get("sha256") and have.sha256 != want["sha256"]:
            problems.append(f"{path_of(have)}: sha256 {have.sha256}, {what} {want['sha256']}")
    return problems


def inspect(path: str | os.PathLike, manifest: Manifest | None, record: dict | None = None) -> Inspection:
    """Check the weights at ``path`` (a chunk folder or a file) against the manifest and install record.

    Parameters
    ----------
    path : path-like
        What :func:`locate` returned, or an installed copy.
    manifest : Manifest or None
        None: the pipeline has no manifest, so nothing can be published.
    record : dict, optional
        The install record of this copy; its identities are what an unverified copy is checked against.

    Returns
    -------
    Inspection
        ``problems`` empty when the weights are fit to use.
    """
    path = Path(path)
    fmt = "chunks" if path.is_dir() else "pt"
    result = Inspection(path=path, format=fmt)
    if not path.exists():
        result.problems.append(f"{path}: missing")
        result.incomplete = True
        return result
    if fmt == "chunks":
        paths, result.problems = _chunk_paths(path, manifest)
        if result.problems:
            result.incomplete = True
            return result
    else:
        paths = [path]
    result.files, result.sha256 = identify(paths)

    def name(ident: FileIdentity) -> Path:
        return path / ident.name if fmt == "chunks" else path

    if is_demo(path):
        result.status = "demo"
        return result
    recorded_status = record.get("status") if record else None
    if manifest is not None and manifest.has_identity and recorded_status != "unverified":
        if fmt == manifest.format:
            problems = _compare(name, result.files, manifest.files, "the published file has")
            if problems:
                result.problems = problems  # the published form, but not the published bytes
                return result
            result.status = "published"
            return result
        if fmt == "pt" and manifest.format == "chunks":
            # One file holding the published chunks' bytes: cut it as they were cut, compare each piece.
            sizes = [f.size for f in manifest.files]
            total = result.files[0].size
            if None in sizes or sum(sizes) != total:
                sizes = published_chunk_sizes(total, len(manifest.files))
            if blob_ids_of_slices(path, sizes) == [f.git_blob for f in manifest.files]:
                result.status = "published"
                return result
    if record is not None:
        # What was installed is what must be here: the record's identities (unverified or a published .pt).
        recorded = record.get("files", [])
        if [f["name"] for f in recorded] != [f.name for f in result.files]:
            result.problems.append(f"{path}: holds {[f.name for f in result.files]}, installed "
                                   f"{[f['name'] for f in recorded]}")
        else:
            result.problems += _compare(name, result.files, recorded, "installed with")
        result.status = recorded_status or "unverified"
        if result.status == "unverified":
            result.note = "sha256 recorded at install"
        return result
    result.status = "unverified"
    result.note = ("no published identity in the manifest" if manifest is None or not manifest.has_identity
                   else "not the published bytes") + "; no install record"
    return result


# -- the weights folder ------------------------------------------------------------
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
class Installed:
    """What :func:`install` did."""

    pipeline: str
    path: Path
    status: str
    sha256: str
    replaced: list[Path]


def _guess_pipeline(path: Path, fmt: str, manifests: dict[str, Manifest]) -> Manifest:
    if fmt == "chunks":
        fits = [m for m in manifests.values() if m.format == "chunks"]
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
    manifests = load_manifests(manifests_dir)
    if pipeline is None:
        manifest = _guess_pipeline(path, fmt, manifests)
    else:
        manifest = manifests.get(pipeline)
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
    if checked.format == "pt" and checked.status != "published":
        found = torch_file_keys(path, manifest.keys)
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
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        if p != old:
            gone.append(p)
    return gone


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# -- listing and verifying -------------------------------------------------------------
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
        for demo in sorted(folder.glob(f"{pipeline}-demo*")) if folder.is_dir() else ():
            if is_demo(demo):
                out.append(Entry(pipeline, demo, inspect(demo, manifest)))
    return out


def render_survey(entries: Sequence[Entry], folder: Path) -> str:
    """Lines for ``specq weights list`` / ``verify``."""
    lines = [f"weights folder: {folder}"]
    for e in entries:
        if e.path is None:
            lines.append(f"{e.pipeline:<13} not installed")
            continue
        i = e.inspection
        shown = f"{e.path.name}{'/' if e.path.is_dir() else ''}"
        if i.problems:
            lines.append(f"{e.pipeline:<13} MISMATCH    {shown}")
            lines += [f"    {p}" for p in i.problems]
            continue
        note = f"  ({i.note})" if i.note else ""
        lines.append(f"{e.pipeline:<13} {i.status:<11} {shown:<22} sha256 {i.sha256}{note}")
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
