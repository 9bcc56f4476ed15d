"""How long the broker lets a worker hold a message, and whether the longest message fits in it.

Redis hands a message that a worker took and has not acknowledged to another worker after
``SPECQ_VISIBILITY_TIMEOUT``; RabbitMQ closes the channel of a consumer that holds one
longer than its ``consumer_timeout`` (30 minutes unless ``rabbitmq.conf`` sets it; a client
cannot read it). A message that outlasts the limit runs twice, or for ever: its rows are
keyed, so nothing is doubled, but the work is. The embedded broker has no such limit: it
takes a message back only from a worker that is gone.

A worker checks twice. When it first loads a pipeline's model it times the warm model on a
made-up spectrum at two draw counts and extrapolates to a full message, chunk size × draws
(:func:`check_fit`); after every message it warns when the message took more than half
the limit (:func:`warn_if_near_visibility_timeout`).
"""
from __future__ import annotations

import logging
import time

from workers.interrupt import is_shutdown
from workers.settings import Settings

log = logging.getLogger("specq.worker")

RABBITMQ_CONSUMER_TIMEOUT_S = 1800  # RabbitMQ's default consumer_timeout
WARMUP_SPECTRA = 1  # a first call pays the one-off costs (allocations, kernels, JIT), untimed
WARMUP_DRAWS = 8  # the second timing's draws, where a message asks for more than the fewest
_checked: set[tuple[str, str]] = set()  # (pipeline, model) pairs this process has timed


def hold_limit(settings: Settings) -> tuple[float, str] | None:
    """Seconds the broker lets a worker hold a message, and the setting that says so; None: no limit."""
    from tasks.brokers import kind

    broker = kind(settings)
    if broker == "embedded":
        return None
    if broker.startswith("rabbitmq"):
        return (RABBITMQ_CONSUMER_TIMEOUT_S, f"RabbitMQ's consumer_timeout ({RABBITMQ_CONSUMER_TIMEOUT_S // 60} min "
                                             "unless rabbitmq.conf sets it)")
    return float(settings.visibility_timeout), f"SPECQ_VISIBILITY_TIMEOUT={settings.visibility_timeout} s"


def estimate_message_seconds(pipeline, n_refs: int, draws: int) -> float | None:
    """Seconds the warm ``pipeline`` would take on ``n_refs`` spectra with ``draws`` draws each, or None.

    Times :data:`WARMUP_SPECTRA` of the pipeline's made-up spectra (a first call pays the
    one-off costs, untimed) at its fewest draws and, where a message asks for more, again
    at up to :data:`WARMUP_DRAWS`: the two timings give a call's fixed cost and a network
    row's cost, and a message costs one fixed cost per batch the engine makes of it
    (:func:`workers.engine.growing_chunks`) and one row cost per noise-free pass and draw.
    A single timing charges its fixed cost to every row, several times a message's time.
    Reading the files is left out (the engine reads ahead of the network). None when the
    pipeline offers no made-up spectra or refuses them (it would time no network).
    """
    from workers.engine import growing_chunks

    spectra = pipeline.example_spectra(WARMUP_SPECTRA)
    if not spectra:
        return None
    low = min(draws, max(1, pipeline.spec.min_draws))
    high = min(draws, max(low, WARMUP_DRAWS))

    def timed(n_draws: int) -> float | None:
        options = pipeline.options(draws=n_draws, seed=0)
        started = time.perf_counter()
        rows = pipeline.predict(spectra, options)
        elapsed = time.perf_counter() - started
        return None if any(row.get("error") for row in rows) else elapsed

    for n_draws in dict.fromkeys((low, high)):  # each shape once, untimed: first calls pay one-off costs
        pipeline.predict(spectra, pipeline.options(draws=n_draws, seed=0))
    t_low = timed(low)
    if t_low is None:
        return None
    rows = n_refs * (1 + draws)
    single = t_low / (len(spectra) * (1 + low)) * rows  # every row charged the call's whole cost
    if high > low:
        t_high = timed(high)
        if t_high is None:  # refused at more draws: the single timing
            return single
        per_row = (t_high - t_low) / (len(spectra) * (high - low))
        fixed = t_low - len(spectra) * (1 + low) * per_row
        if per_row > 0 and fixed >= 0:  # else timing noise: the larger call's rate alone, as below
            calls = len(growing_chunks(list(range(n_refs)), getattr(pipeline, "batch_size", None) or 8))
            return calls * fixed + rows * per_row
        return t_high / (len(spectra) * (1 + high)) * rows
    return single


def check_fit(pipeline, settings: Settings, draws: int) -> bool:
    """Warn once per model in this process when a full message may outlast the broker's limit; True when warned.

    A full message is the pipeline's chunk size (``SPECQ_<NAME>_CHUNK_SIZE``) × ``draws``;
    it may not fit when the estimate is above half the limit (the files are read and the
    rows written besides, and a busy machine is slower).
    """
    limit = hold_limit(settings)
    key = (pipeline.name, getattr(pipeline, "model_sha256", ""))
    if limit is None or key in _checked:
        return False
    _checked.add(key)
    chunk = settings.chunk_size_for(pipeline.name)
    try:
        estimate = estimate_message_seconds(pipeline, chunk, draws)
    except Exception as exc:  # a timing that fails must not cost the message its rows
        if is_shutdown(exc):
            raise
        log.info("%s: no estimate of a message's time (%s: %s)", pipeline.name, type(exc).__name__, exc)
        return False
    if estimate is None:
        return False
    seconds, setting = limit
    log.info("%s: a message of %d references × %d draws takes about %.1f s here (estimated from a warm-up spectrum)",
             pipeline.name, chunk, draws, estimate)
    if estimate <= seconds / 2:
        return False
    log.warning("%s: a message of %d references × %d draws may take about %.0f s here, more than half of %s: "
                "it may be handed to another worker while this one runs it; lower SPECQ_%s_CHUNK_SIZE or the "
                "draws, or raise the limit", pipeline.name, chunk, draws, estimate, setting, pipeline.name.upper())
    return True


def warn_if_near_visibility_timeout(pipeline_name: str, task_id: str, n_refs: int, elapsed: float,
                                    settings) -> bool:
    """Warn when a message took more than half the broker's hold limit; True when it did.

    Redis hands a message out again once a worker has held it for the visibility
    timeout, RabbitMQ closes the channel of a consumer past its ``consumer_timeout``: a
    message (chunk size × draws of work) that outlasts the limit runs twice, or for ever.
    Its rows are keyed, so nothing is doubled, but the work is. The embedded broker has
    no limit.
    """
    held = hold_limit(settings)
    if held is None:
        return False
    limit, setting = held
    if elapsed <= limit / 2:
        return False
    log.warning("%s %s: %d references took %.0f s, more than half of %s: a longer message would be handed to "
                "another worker while this one runs it; lower SPECQ_%s_CHUNK_SIZE or the draws, or raise the "
                "limit", pipeline_name, task_id, n_refs, elapsed, setting, pipeline_name.upper())
    return True
