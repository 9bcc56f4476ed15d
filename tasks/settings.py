"""specq settings: ``SPECQ_*`` environment variables (and an optional TOML file) → typed values.

Every process (producer, worker, CLI) reads the same names, so a deployment sets them
once. Precedence: environment > config file (``SPECQ_CONFIG`` or ``specq.toml`` in the
current folder) > defaults.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

_ENV_PREFIX = "SPECQ_"


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
    state_dir: Path = field(default_factory=_default_state_dir)
    catalog: Path | None = None
    bossnet_queue: str = "gpu"
    astronn_dist_queue: str = "cpu"
    chunk_size: int | None = None  # set: references per message for every pipeline
    bossnet_chunk_size: int = 32  # ~1.5 s of work a message on a 2-core CPU
    astronn_dist_chunk_size: int = 128  # ~0.4 s: 25x faster a spectrum, so more per message
    visibility_timeout: int = 3600
    max_redeliveries: int = 3
    max_retries: int = 6
    retry_backoff: float = 2.0
    device: str | None = None
    fits_backend: str | None = None

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
        return getattr(self, f"{pipeline}_queue")

    def chunk_size_for(self, pipeline: str) -> int:
        """References per message for ``pipeline``: ``chunk_size`` when set, else the pipeline's own.

        A message should hold enough work that its fixed costs (broker round trip, the
        engine's first read, two database writes) stay small beside it, and little enough
        that a retry or a redelivery after a crash repeats little.
        """
        return int(self.chunk_size or getattr(self, f"{pipeline}_chunk_size"))


def _coerce(name: str, value: str, current):
    if name.endswith("chunk_size"):
        return int(value)
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if name in ("data_root", "state_dir", "weights_dir", "catalog"):
        return Path(value).expanduser()
    return value


def load_settings(**overrides) -> Settings:
    """Settings from defaults, the config file, the environment, then ``overrides``."""
    s = Settings()
    values: dict[str, object] = {}
    cfg = os.environ.get("SPECQ_CONFIG") or ("specq.toml" if Path("specq.toml").exists() else None)
    if cfg:
        with open(cfg, "rb") as fh:
            values.update(tomllib.load(fh).get("specq", {}))
    names = {f.name for f in fields(Settings)}
    for name in names:
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = env
    if "broker_url" not in values and os.environ.get("CELERY_BROKER_URL"):
        values["broker_url"] = os.environ["CELERY_BROKER_URL"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown specq setting(s): {', '.join(sorted(unknown))}")
    for name, value in values.items():
        current = getattr(s, name)
        setattr(s, name, _coerce(name, value, current) if isinstance(value, str) else value)
    return s
