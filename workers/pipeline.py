"""What every pipeline offers the engine: a warm model that turns spectra into result rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Sequence

from workers import row as result_row
from workers.registry import PipelineSpec
from workers.schema import ResultSchema
from workers.spectrum import Spectrum

# The model_sha256 of a row written while no model could be loaded. It must not be
# NULL (NULLs never collide in the (spectrum_key, model_sha256) key, so retries would
# add rows) and must not look like a hash: no weights produced the row.
UNLOADED_MODEL_SHA = "unloaded"
# The most Monte Carlo draws a message may ask for: 500x BossNet's 20, 100x AstroNN's 100. A
# typo of 10**6 would fill the memory before the first row, the worker's and its neighbours'.
MAX_DRAWS = 10_000


@dataclass(frozen=True)
class Options:
    """Per-message options of a prediction: they travel with the call, never on the shared model.

    Parameters
    ----------
    draws : int
        Monte Carlo draws (BossNet noise draws; AstroNN dropout passes).
    seed : int, optional
        Makes the draws reproducible: each spectrum's draws depend only on the seed and the
        spectrum's identity, never on which batch it came in. None → fresh randomness.
    precision : str
        Arithmetic of the network forward (one of the pipeline's ``precisions``).
    """

    draws: int
    seed: int | None = None
    precision: str = "float32"


# The options a message carries, by name (a message's JSON, submit's options= dict).
MESSAGE_OPTIONS = tuple(f.name for f in fields(Options))


class Pipeline(ABC):
    """A loaded model plus its pre- and post-processing.

    Subclasses set :attr:`spec` and implement :meth:`_predict`. One instance is built per
    worker process and reused for every task (the warm model); what varies per message
    (:class:`Options`) is an argument of :meth:`predict`, so concurrent tasks of one
    process can share the instance.

    Parameters
    ----------
    weights : path-like, optional
        Published weights (file or chunk folder), or the spec's demo weights
        (:meth:`PipelineSpec.demo_weights_path`); the engine passes one or the other.
        None only for a pipeline that has no weights.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; None → CUDA when available.
    draws, seed, precision : optional
        This instance's default :class:`Options` (for ``specq run`` and bench); a message's
        own options override them per call.
    batch_size : int, optional
        Spectra per device step.
    """

    spec: PipelineSpec
    model_sha256: str
    demo: bool

    def __init__(self, weights=None, device: str | None = None, draws: int | None = None,
                 seed: int | None = None, batch_size: int | None = None, precision: str | None = None):
        self.defaults = self.options(draws=draws, seed=seed, precision=precision)
        self.batch_size = batch_size

    def required_weights(self, weights):
        """``weights``, or a `WeightsError` saying where a pipeline's weights come from."""
        if weights is None:
            from workers.weights.formats import WeightsError

            raise WeightsError(f"{self.name} needs weights: install the published ones (specq weights install) "
                               f"or ask for demo weights (SPECQ_DEMO_WEIGHTS=1)")
        return weights

    # The spec's facts, under the names the engine and the rows use (set from ``spec``).
    name: str
    schema: ResultSchema
    instrument: str
    default_draws: int
    exception_flag: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls._take_spec(cls, cls.spec)

    @staticmethod
    def _take_spec(target, spec: PipelineSpec) -> None:
        target.spec = spec
        target.name, target.schema, target.instrument = spec.name, spec.schema, spec.instrument
        target.default_draws, target.exception_flag = spec.default_draws, spec.schema.exception_flag

    def options(self, draws: int | None = None, seed: int | None = None, precision: str | None = None,
                defaults: Options | None = None) -> Options:
        """Checked :class:`Options`; what is None comes from ``defaults`` (else this instance's, else the spec's).

        Raises
        ------
        ValueError, TypeError
            Fewer draws than the pipeline needs, a seed or draws that are not whole
            numbers, or a precision the pipeline does not offer.
        """
        base = defaults or getattr(self, "defaults", None) or Options(self.spec.default_draws, None,
                                                                      self.spec.precisions[0])
        n = base.draws if draws is None else _whole(draws, "draws")
        if n < self.spec.min_draws:
            raise ValueError(f"{self.name} needs at least {self.spec.min_draws} draws, got draws={n}")
        if n > MAX_DRAWS:
            raise ValueError(f"{self.name} takes at most {MAX_DRAWS} draws, got draws={n}")
        chosen_seed = base.seed if seed is None else _whole(seed, "seed")
        chosen_precision = base.precision if precision is None else str(precision)
        if chosen_precision not in self.spec.precisions:
            raise ValueError(f"{self.name} precision must be one of {', '.join(self.spec.precisions)}, "
                             f"not {chosen_precision!r}")
        return Options(n, chosen_seed, chosen_precision)

    def refuse_reason(self, spectrum: Spectrum) -> str | None:
        """Why this pipeline cannot take ``spectrum`` (None when it can)."""
        if spectrum.instrument != self.instrument:
            return f"{self.name} needs a {self.instrument.upper()} spectrum, got {spectrum.instrument.upper()}"
        if self.spec.coadds_only and spectrum.is_visit:
            return (f"{self.name} needs a coadded {self.instrument.upper()} spectrum, got a visit spectrum: "
                    f"{spectrum.path} hdu {spectrum.hdu} row {spectrum.row}")
        return None

    def example_spectra(self, n: int) -> list[Spectrum]:
        """``n`` made-up spectra this pipeline's network takes, for timing it (:mod:`tasks.visibility`).

        By default its instrument's usual pixels (:func:`workers.spectrum.examples`); a
        pipeline whose input is unusual overrides it, or returns [] to be left untimed.
        """
        from workers.spectrum import examples

        return examples(self.instrument, n)

    #: The engine prepares a batch (:meth:`prepare`) while the device runs the one before:
    #: true for a pipeline whose device computes apart from the host (CUDA).
    prepares_ahead: bool = False

    def predict(self, spectra: Sequence[Spectrum], options: Options | None = None) -> list[dict[str, Any]]:
        """One row (see :func:`workers.row.values`) per spectrum, in order.

        A spectrum the pipeline cannot use gets a failed row; an exception means the batch
        as a whole failed (the engine narrows it down).
        """
        return self._predict(list(spectra), options or self.defaults)

    def prepare(self, spectra: Sequence[Spectrum], options: Options | None = None) -> Any:
        """The host's share of :meth:`predict` for a batch: what it does before the device runs.

        ``finish(prepare(spectra, options))`` is ``predict(spectra, options)``, row for row;
        the engine calls the two apart to prepare a batch while the device runs the one
        before (see :attr:`prepares_ahead`). By default nothing is done ahead.
        """
        return self._prepare(list(spectra), options or self.defaults)

    def finish(self, prepared: Any) -> list[dict[str, Any]]:
        """The rows of a batch :meth:`prepare` made ready (the device's share, and what follows)."""
        return self._finish(prepared)

    @abstractmethod
    def _predict(self, spectra: list[Spectrum], options: Options) -> list[dict[str, Any]]:
        """:meth:`predict` with checked options."""

    def _prepare(self, spectra: list[Spectrum], options: Options) -> Any:
        """:meth:`prepare` with checked options; a pipeline that prepares ahead overrides it with :meth:`_finish`."""
        return spectra, options

    def _finish(self, prepared: Any) -> list[dict[str, Any]]:
        spectra, options = prepared
        return self._predict(spectra, options)

    def failed_row(self, reason: str) -> dict[str, Any]:
        """The row of a spectrum that could not be processed: NaNs, the exception bit, the reason."""
        return result_row.values(self.schema, error=reason)


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) and not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be a whole number, not {value!r}")
    try:
        return int(value)
    except ValueError:  # a string that is not one ("x", "1.5"): int()'s message names neither
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None


class UnloadedPipeline(Pipeline):
    """Stand-in for a pipeline whose model could not be loaded: schema and flags, no model.

    It lets the runner write the flagged row every spectrum is owed when the weights are
    corrupt, do not fit the network, or keep failing to load. The rows carry
    ``model_sha256 = UNLOADED_MODEL_SHA`` and ``demo_weights = False``: no weights, demo
    or published, produced them.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline's declaration.
    """

    model_sha256 = UNLOADED_MODEL_SHA
    demo = False

    def __init__(self, spec: PipelineSpec):
        self._take_spec(self, spec)
        super().__init__()
        spec.schema.flag(spec.schema.exception_flag)  # fail here, not on the first row, if the flag is wrong

    def _predict(self, spectra, options):
        """Never predicts: there is no model.

        Raises
        ------
        RuntimeError
            Always.
        """
        raise RuntimeError(f"{self.name}: no model is loaded")


def message_options(names: Sequence[str], **options) -> Options | None:
    """``options`` (draws, seed, precision) as every pipeline of ``names`` takes them (the last
    one's :class:`Options`; None for no pipeline).

    Checked before a message is sent: a worker replaces an option its pipeline refuses by
    the default and only logs it.

    Raises
    ------
    TypeError, ValueError
        The first pipeline's refusal, as its :meth:`Pipeline.options` words it.
    """
    from workers import registry

    checked = None
    for name in names:
        checked = UnloadedPipeline(registry.get(name)).options(**options)
    return checked
