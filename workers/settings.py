"""specq settings: ``SPECQ_*`` environment variables (and an optional TOML file) → typed values.

Every process (producer, worker, CLI) reads the same names, so a deployment sets them
once. Precedence: environment > config file (``SPECQ_CONFIG`` or ``specq.toml`` in the
current folder) > defaults.

Each registered pipeline (see :mod:`workers.registry`) has two settings named after it:
``SPECQ_<NAME>_QUEUE`` and ``SPECQ_<NAME>_CHUNK_SIZE`` (``<name>_queue`` and
``<name>_chunk_size`` in the config file), defaulting to its spec's queue and message size.
"""
from __future__ import annotations

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


def _default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "specq"


@dataclass
class Settings:
    """Typed view of the configuration. Field ``x`` is read from ``SPECQ_X``."""

    broker_url: str | None = None
    result_backend: str | None = None
    database_url: str | None = None
    data_root: Path = field(default_factory=Path.cwd)
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
    metrics_port: int | None = None  # set: each worker serves Prometheus metrics here (prefork child i: +i)
    log_format: str = "text"  # "json": one JSON object a line, with task id and spectrum

    # -- derived ---------------------------------------------------------------
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
    def weights_cache(self) -> Path:
        return self.weights_dir or self.state_dir / "weights"

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

    def __getattr__(self, name: str):
        # ``settings.bossnet_queue`` and ``settings.astronn_dist_chunk_size`` read as before.
        pipeline, kind = _per_pipeline_key(name)
        if kind == "queue":
            return self.queue_for(pipeline)
        if kind == "chunk_size":
            return self.chunk_sizes.get(pipeline) or _spec(pipeline).chunk_size
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")


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


def _coerce(name: str, value: str, current):
    if name.endswith("chunk_size") or name == "metrics_port":
        return _number(name, value, int)
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return _number(name, value, int)
    if isinstance(current, float):
        return _number(name, value, float)
    if name in ("data_root", "state_dir", "weights_dir", "weights_manifests", "catalog"):
        return Path(value).expanduser()
    if name == "fits_backend":
        return value.strip().lower() or DEFAULT_FITS_BACKEND
    return value


def load_settings(**overrides) -> Settings:
    """Settings from defaults, the config file, the environment, then ``overrides``.

    Raises
    ------
    ValueError
        An unknown setting, or a value of the wrong type.
    """
    from workers.registry import names as pipeline_names

    s = Settings()
    values: dict[str, object] = {}
    cfg = os.environ.get("SPECQ_CONFIG") or ("specq.toml" if Path("specq.toml").exists() else None)
    if cfg:
        with open(cfg, "rb") as fh:
            values.update(tomllib.load(fh).get("specq", {}))
    names = {f.name for f in fields(Settings)} - {"queues", "chunk_sizes"}
    names |= {f"{p}_{kind}" for p in pipeline_names() for kind in ("queue", "chunk_size")}
    for name in names:
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = env
    if "broker_url" not in values and os.environ.get("CELERY_BROKER_URL"):
        values["broker_url"] = os.environ["CELERY_BROKER_URL"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise SettingsError(f"unknown specq setting(s): {', '.join(sorted(unknown))}")
    for name, value in values.items():
        pipeline, kind = _per_pipeline_key(name)
        if kind == "queue":
            s.queues[pipeline] = str(value)
        elif kind == "chunk_size":
            s.chunk_sizes[pipeline] = _positive_int(name, value)
        else:
            current = getattr(s, name)
            setattr(s, name, _coerce(name, value, current) if isinstance(value, str) else value)
    _check_urls(s)
    if s.visibility_timeout < 1:
        raise SettingsError(f"SPECQ_VISIBILITY_TIMEOUT must be at least 1 (seconds), not {s.visibility_timeout}")
    if s.fits_backend not in FITS_BACKENDS:
        raise SettingsError(f"fits_backend = {s.fits_backend!r} (SPECQ_FITS_BACKEND or specq.toml): "
                         f"use one of {', '.join(FITS_BACKENDS)}")
    return s


def _number(name: str, value: str, kind: type):
    """``value`` as an int or float, or a SettingsError naming the setting."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"{_ENV_PREFIX}{name.upper()} must be {what}, not {value!r}") from None


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def _check_urls(s: Settings) -> None:
    """A broker or database URL of a kind specq cannot use: a SettingsError before anything connects."""
    if s.broker_url and _scheme(s.broker_url) not in BROKER_SCHEMES:
        raise SettingsError(f"SPECQ_BROKER_URL: unknown broker scheme {_scheme(s.broker_url) or s.broker_url!r}: "
                            f"use redis://, rediss:// or amqp:// (or leave it unset for the embedded broker)")
    if s.database_url and not _scheme(s.database_url):
        raise SettingsError(f"SPECQ_DATABASE_URL: not a database URL: {s.database_url!r} "
                            "(use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)")


def _positive_int(name: str, value) -> int:
    number = _number(name, value, int)
    if number < 1:
        raise SettingsError(f"{_ENV_PREFIX}{name.upper()} must be at least 1, not {number}")
    return number
