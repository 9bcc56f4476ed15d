"""specq settings: ``SPECQ_*`` environment variables (and an optional TOML file) → typed values.

Every process (producer, worker, CLI) reads the same names, so a deployment sets them
once. Precedence: environment > config file (``SPECQ_CONFIG`` or ``specq.toml`` in the
current folder) > defaults.

Each registered pipeline (see :mod:`workers.registry`) has two settings named after it:
``SPECQ_<NAME>_QUEUE`` and ``SPECQ_<NAME>_CHUNK_SIZE`` (``<name>_queue`` and
``<name>_chunk_size`` in the config file), defaulting to its spec's queue and message size.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

_ENV_PREFIX = "SPECQ_"
# The FITS readers' data backends (workers.readers.BACKENDS, DEFAULT_BACKEND); "native" falls
# back to astropy on anything unusual. Repeated here so that settings are checked without
# importing the readers (numpy, astropy); a test keeps the two equal.
FITS_BACKENDS = ("astropy", "fitsio", "native")
DEFAULT_FITS_BACKEND = "native"
# A data root may be a URL of these schemes (read through fsspec, see workers.remote).
REMOTE_SCHEMES = ("http", "https", "s3")
READER_KINDS = ("process", "thread")  # workers.reader_pool.READER_KINDS; a test keeps the two equal
# Each device queue has two lanes: new spectra (ordinary) are served before a reprocessing (bulk).
LANES = ("ordinary", "bulk")
QUEUE_TYPES = ("classic", "quorum")  # RabbitMQ's: quorum queues are replicated across broker nodes


def is_url(root) -> bool:
    """True when a data root is a URL (``scheme://…``) rather than a folder."""
    return isinstance(root, str) and "://" in root


def verify_checksums() -> bool:
    """Whether readers check the FITS checksums of the HDUs they read (``SPECQ_VERIFY_CHECKSUMS``).

    On unless the variable is ``0``, ``false``, ``no`` or ``off``. Read from the environment
    each time a file is opened (cheap), so that readers need no settings object passed down.
    """
    value = os.environ.get(_ENV_PREFIX + "VERIFY_CHECKSUMS", "").strip().lower()
    return value not in ("0", "false", "no", "off")


def _default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "specq"


# The longest span a setting or option may give, ten years: a longer one is a typo, and one long
# enough would take the dates computed from it out of a datetime's range.
MAX_SECONDS = 10 * 366 * 86400

@dataclass
class Settings:
    """Typed view of the configuration. Field ``x`` is read from ``SPECQ_X``."""

    broker_url: str | None = None
    result_backend: str | None = None
    database_url: str | None = None
    data_root: Path | str = field(default_factory=Path.cwd)  # a folder, or an http(s):// or s3:// URL
    cache_dir: Path | None = None  # a URL root's local file cache (default: <state_dir>/cache)
    cache_gb: float = 20.0  # the cache's size bound
    remote_timeout: float = 60.0  # seconds a URL root may stay silent before the read is retried
    range_read_mb: float = 64.0  # files bigger than this are read by ranges (the HDUs wanted), not fetched whole
    weights_dir: Path | None = None
    weights_manifests: Path | None = None  # folder of <pipeline>.toml (default: the repository's weights/)
    demo_weights: bool = False  # no published weights installed → seeded demo weights instead of stopping
    state_dir: Path = field(default_factory=_default_state_dir)
    catalog: Path | None = None
    chunk_size: int | None = None  # set: references per message for every pipeline
    # Per pipeline, from SPECQ_<NAME>_QUEUE / SPECQ_<NAME>_CHUNK_SIZE over the specs' defaults.
    queues: dict[str, str] = field(default_factory=dict)
    chunk_sizes: dict[str, int] = field(default_factory=dict)
    max_message_refs: int = 1024  # a worker cuts a bigger message into messages of the usual size
    # Seconds before Redis hands a message a worker took and never acknowledged (the
    # worker was killed) to another worker: a killed worker's work comes back within
    # minutes. It must outlast the longest message (chunk size × draws); a worker warns
    # when a message took more than half of it (tasks.runner).
    visibility_timeout: int = 600
    max_redeliveries: int = 3
    max_retries: int = 6
    retry_backoff: float = 2.0
    device: str | None = None
    fits_backend: str = DEFAULT_FITS_BACKEND  # the one place it is read; producers and workers pass it on
    readers: int | None = None  # files read in parallel by a worker; None: the cores it may use
    reader_kind: str = "process"  # "process" or "thread" (processes: the readers are Python, the GIL would serialise threads)
    read_timeout: float = 300.0  # seconds one file may take a reader before it counts as hung
    metrics_port: int | None = None  # set: each worker serves Prometheus metrics here (prefork child i: +i)
    log_format: str = "text"  # "json": one JSON object a line, with task id and spectrum
    lanes: str = "ordinary,bulk"  # the lanes a worker serves, ordinary first (one alone: a dedicated worker)
    queue_type: str = "classic"  # RabbitMQ only: "quorum" declares replicated quorum queues
    # Not a setting: the names whose value the config file gave, with its path (see named()).
    from_config_file: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # -- derived ---------------------------------------------------------------
    def named(self, name: str) -> str:
        """How a message names setting ``name``: the config file and its key when the file gave
        its value (``specq.toml: chunk_size``), else its variable (``SPECQ_CHUNK_SIZE``)."""
        config_file = self.from_config_file.get(name)
        return f"{config_file}: {name}" if config_file else _ENV_PREFIX + name.upper()

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the filesystem broker needs no server."""
        return not self.broker_url

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.state_dir / "broker"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'results.sqlite'}"

    @property
    def file_cache(self) -> Path:
        return self.cache_dir or self.state_dir / "cache"

    @property
    def weights_cache(self) -> Path:
        return self.weights_dir or self.state_dir / "weights"

    @property
    def reader_count(self) -> int:
        """Readers a worker reads its files with: ``readers``, else the cores this process may use."""
        if self.readers:
            return int(self.readers)
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # no CPU affinity on this OS
            return max(1, os.cpu_count() or 1)

    @property
    def served_lanes(self) -> tuple[str, ...]:
        """The lanes a worker serves, in the order it serves them (ordinary before bulk)."""
        asked = {lane.strip().lower() for lane in self.lanes.split(",") if lane.strip()}
        return tuple(lane for lane in LANES if lane in asked)

    def queue_for(self, pipeline: str) -> str:
        """The queue ``pipeline``'s messages are routed to."""
        return self.queues.get(pipeline) or _spec(pipeline).queue

    def chunk_size_for(self, pipeline: str) -> int:
        """References per message for ``pipeline``: ``chunk_size`` when set, else the pipeline's own.

        A message should hold enough work that its fixed costs (broker round trip, the
        engine's first read, two database writes) stay small beside it, and little enough
        that a retry or a redelivery after a crash repeats little.
        """
        size = int(self.chunk_size or self.chunk_sizes.get(pipeline) or _spec(pipeline).chunk_size)
        return min(size, int(self.max_message_refs))


def _spec(pipeline: str):
    from workers.registry import get  # torch-free: the specs and their schemas only

    return get(pipeline)


def _per_pipeline_key(name: str) -> tuple[str, str | None]:
    """``"bossnet_chunk_size"`` → ``("bossnet", "chunk_size")``; ``(name, None)`` for other names."""
    if name.startswith("_"):
        return name, None
    from workers.registry import names

    for kind in ("chunk_size", "queue"):
        pipeline = name[: -len(kind) - 1]
        if name.endswith("_" + kind) and pipeline in names():
            return pipeline, kind
    return name, None


class SettingsError(ValueError):
    """A setting the user gave that specq cannot use (the message names it and says why)."""


# Brokers Celery (kombu) can reach, by URL scheme; anything else is a typo.
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "filesystem", "memory")
# Databases the result store is tested against (any other SQLAlchemy URL whose driver is
# installed also works: checked when the store opens it).
DATABASE_SCHEMES = ("sqlite", "postgresql")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# Numbers a setting must lie within: (least, whether the least itself is allowed, most or None).
# NaN passes no comparison, so without these a NaN read timeout never fires (a hung reader hangs
# the run for ever) and an infinite cache or range size fails deep inside, turned into bytes.
_BOUNDS: dict[str, tuple[float, bool, float | None]] = {
    "read_timeout": (0, False, MAX_SECONDS),
    "remote_timeout": (0, False, MAX_SECONDS),
    "retry_backoff": (0, True, MAX_SECONDS),
    "cache_gb": (0, True, 1e9),  # an exabyte: anything larger is a typo
    "range_read_mb": (0, True, 1e12),
    "max_retries": (0, True, None),
    "max_redeliveries": (0, True, None),
    "metrics_port": (1, True, 65535),  # each prefork child serves port + its index
}


def _check_bounds(s: Settings) -> None:
    """Each number of :data:`_BOUNDS` finite and in its range, else a SettingsError naming it."""
    for name, (least, least_allowed, most) in _BOUNDS.items():
        value = getattr(s, name)
        if value is None:
            continue
        below = value < least or (value == least and not least_allowed)
        if math.isfinite(value) and not below and (most is None or value <= most):
            continue
        wanted = f"at least {least:g}" if least_allowed else f"more than {least:g}"
        if most is not None:
            wanted += f" and at most {most:.15g}" + (" (ten years)" if most == MAX_SECONDS else "")
        kind = "a whole number" if isinstance(value, int) else "a finite number"
        raise SettingsError(f"{s.named(name)} must be {kind}, {wanted}, not {value!r}")


def _coerce(name: str, value: str, current, where: str):
    """The text of setting ``name`` as its type; ``where`` names it in an error (:meth:`Settings.named`)."""
    if name.endswith("chunk_size") or name in ("metrics_port", "readers"):
        return _number(where, value, int)
    if isinstance(current, bool):
        # a typo ("ture", "maybe") would otherwise read as off, silently
        word = value.strip().lower()
        if word not in _TRUE + _FALSE:
            raise SettingsError(f"{where} must be 1, true, yes or on (or 0, false, no, off), not {value!r}")
        return word in _TRUE
    if isinstance(current, int):
        return _number(where, value, int)
    if isinstance(current, float):
        return _number(where, value, float)
    if name == "data_root" and is_url(value):
        return value.strip()
    if name in ("data_root", "cache_dir", "state_dir", "weights_dir", "weights_manifests", "catalog"):
        return Path(value).expanduser()
    if name == "fits_backend":
        return value.strip().lower() or DEFAULT_FITS_BACKEND
    return value


def _toml_value(name: str, value, path: str):
    """A config file's value as the text a ``SPECQ_*`` variable would give (so both are read
    alike); a list of words is joined with commas (``lanes = ["ordinary", "bulk"]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 600.0 where a whole number is read
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise SettingsError(f"{path}: {name}: a {type(value).__name__} is not a setting's value "
                        f"(give text, a number, true/false or a list of words)")


def _config_file(path: str, named_by: str) -> dict:
    """The ``[specq]`` table of a TOML config file; `SettingsError` naming the file when it
    cannot be read or is not TOML with such a table."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh).get("specq", {})
    except OSError as exc:
        raise SettingsError(f"{path} ({named_by}): cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 text
        raise SettingsError(f"{path} ({named_by}): not valid TOML: {exc}") from None
    if not isinstance(table, dict):
        raise SettingsError(f"{path} ({named_by}): 'specq' must be a table ([specq]), not a value")
    return table


def load_settings(**overrides) -> Settings:
    """Settings from defaults, the config file, the environment, then ``overrides``.

    Raises
    ------
    ValueError
        An unknown setting, or a value of the wrong type: a `SettingsError` naming the
        variable (``SPECQ_CHUNK_SIZE``), or the config file and its key (``specq.toml: chunk_size``).
    """
    from workers.registry import names as pipeline_names

    s = Settings()
    values: dict[str, object] = {}
    from_file: dict[str, str] = {}  # the names whose value the config file gave: its path
    cfg = os.environ.get("SPECQ_CONFIG") or ("specq.toml" if Path("specq.toml").exists() else None)
    known = {f.name for f in fields(Settings)} - {"queues", "chunk_sizes", "from_config_file"}
    known |= {f"{p}_{kind}" for p in pipeline_names() for kind in ("queue", "chunk_size")}
    if cfg:
        table = _config_file(cfg, "SPECQ_CONFIG" if os.environ.get("SPECQ_CONFIG") else "the config file")
        # unknown names are left as they are, for the unknown-setting check below; "" is unset, as in the environment
        values.update({name: _toml_value(name, value, cfg) if name in known else value for name, value in table.items()
                       if value != ""})
        from_file.update({name: cfg for name in values})
    for name in known:
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = env
            from_file.pop(name, None)
    if "broker_url" not in values and os.environ.get("CELERY_BROKER_URL"):
        values["broker_url"] = os.environ["CELERY_BROKER_URL"]
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    for name in given:
        from_file.pop(name, None)
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"unknown specq setting(s): {', '.join(sorted(unknown))}")

    s.from_config_file = from_file
    where = s.named
    for name, value in values.items():
        pipeline, kind = _per_pipeline_key(name)
        if kind == "queue":
            s.queues[pipeline] = _queue_name(where(name), value)
        elif kind == "chunk_size":
            s.chunk_sizes[pipeline] = _positive_int(where(name), value)
        else:
            current = getattr(s, name)
            setattr(s, name, _coerce(name, value, current, where(name)) if isinstance(value, str) else value)
    _check_urls(s)
    for name in ("chunk_size", "max_message_refs", "readers"):  # 0 of any of them would do no work
        if getattr(s, name) is not None:
            _positive_int(where(name), getattr(s, name))
    _check_bounds(s)
    if not 1 <= s.visibility_timeout <= MAX_SECONDS:
        raise SettingsError(f"{where('visibility_timeout')} must be from 1 to {MAX_SECONDS} (seconds, ten years), "
                            f"not {s.visibility_timeout}")
    if is_url(s.data_root) and s.data_root.split("://", 1)[0].lower() not in REMOTE_SCHEMES:
        raise SettingsError(f"{where('data_root')} {s.data_root.split('://', 1)[0]}://…: a data root is a folder "
                         f"or a URL of {', '.join(REMOTE_SCHEMES)}")
    if s.reader_kind not in READER_KINDS:
        raise SettingsError(f"reader_kind = {s.reader_kind!r} ({where('reader_kind')}): "
                         f"use one of {', '.join(READER_KINDS)}")
    lanes = [lane.strip().lower() for lane in s.lanes.split(",") if lane.strip()]
    if not lanes or set(lanes) - set(LANES):
        raise SettingsError(f"lanes = {s.lanes!r} ({where('lanes')}): use ordinary, bulk, "
                         f"or ordinary,bulk for both")
    if s.queue_type not in QUEUE_TYPES:
        raise SettingsError(f"queue_type = {s.queue_type!r} ({where('queue_type')}): "
                         f"use one of {', '.join(QUEUE_TYPES)}")
    if s.fits_backend not in FITS_BACKENDS:
        raise SettingsError(f"fits_backend = {s.fits_backend!r} ({where('fits_backend')}): "
                         f"use one of {', '.join(FITS_BACKENDS)}")
    return s


def _number(where: str, value: str, kind: type):
    """``value`` as an int or float, or a SettingsError naming the setting (``where``)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{where} must be {what}, not {value!r}") from None


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def _check_urls(s: Settings) -> None:
    """A broker or database URL of a kind specq cannot use: a SettingsError before anything connects."""
    if s.broker_url and _scheme(s.broker_url) not in BROKER_SCHEMES:
        raise SettingsError(f"{s.named('broker_url')}: unknown broker scheme {_scheme(s.broker_url) or s.broker_url!r}: "
                            f"use redis://, rediss:// or amqp:// (or leave it unset for the embedded broker)")
    if s.database_url and not _scheme(s.database_url):
        raise SettingsError(f"{s.named('database_url')}: not a database URL: {s.database_url!r} "
                            "(use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)")


def _positive_int(where: str, value) -> int:
    number = _number(where, value, int)
    if number < 1:
        raise SettingsError(f"{where} must be at least 1, not {number}")
    return number


def _queue_name(where: str, value) -> str:
    """A queue's name without the blanks around it; a SettingsError when nothing is left."""
    name = str(value).strip()
    if not name:
        raise SettingsError(f"{where} must name a queue, not {value!r}")
    return name
