"""The pipeline registry: each pipeline declares itself once, and everything else loops over it.

A pipeline is one folder with a torch-free ``spec.py`` that defines ``SPEC``, a
:class:`PipelineSpec`: its name, the spectra it takes, its default queue and message size,
its result schema, where its published weights are looked for and the class that runs it.
The Celery tasks and routes, the per-pipeline settings, the store's tables, status, the
command line's choices, bench, demo and ``docs/results.md`` all read :func:`pipelines`.

Where pipelines come from, in this order:

- the built-in folders (``workers.bossnet``, ``workers.astronn_dist``);
- installed packages that name a spec module in the ``specq.pipelines`` entry-point group;
- modules named in ``SPECQ_PLUGINS`` (comma-separated), e.g. a pipeline kept beside a
  deployment's own code.

Imports numpy only (through the schemas): producers read the registry.
"""
from __future__ import annotations

import functools
import importlib
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from workers.schema import ResultSchema
from workers.spectrum import INSTRUMENTS

BUILTIN_SPEC_MODULES = ("workers.bossnet.spec", "workers.astronn_dist.spec",
                        # BossNet on the other sources its authors cover
                        "workers.bossnet_apogee.spec", "workers.bossnet_lamost.spec",
                        "workers.bossnet_gaia_rvs.spec", "workers.bossnet_gaia_xp.spec")
ENTRY_POINT_GROUP = "specq.pipelines"
PLUGINS_ENV = "SPECQ_PLUGINS"


@dataclass(frozen=True)
class Option:
    """One of a pipeline's own command-line options, e.g. a catalog it reads or a kernel choice.

    The command line adds it once, whichever pipelines declare it, and passes its value
    to the class of each pipeline that declares it, as the keyword ``keyword``.

    Parameters
    ----------
    flag : str
        The option as typed, e.g. ``"--catalog"``.
    keyword : str
        The pipeline class's keyword argument that receives the value.
    help : str
        One line for ``--help``.
    choices : tuple of str
        The values allowed (empty: any).
    commands : tuple of str
        The commands that take it (``"run"``, ``"bench"``).
    setting : bool
        When the option is not given, the pipeline reads the specq setting of the same name
        (a field of :class:`workers.settings.Settings`, e.g. ``catalog`` from
        ``SPECQ_CATALOG``); the command line's value wins.
    is_file : bool
        The value names a file, checked to exist before any work starts.
    """

    flag: str
    keyword: str
    help: str
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = ("run", "bench")
    setting: bool = False
    is_file: bool = False

    def __post_init__(self):
        if not self.flag.startswith("--") or not self.keyword.isidentifier():
            raise ValueError(f"option {self.flag!r}: the flag starts with --, the keyword is a Python identifier "
                             f"(not {self.keyword!r})")

    @property
    def label(self) -> str:
        """The flag without its dashes (``conv``), for one-line reports."""
        return self.flag.lstrip("-")


@dataclass(frozen=True)
class PipelineSpec:
    """Everything specq needs to know about a pipeline before loading its model.

    Parameters
    ----------
    name : str
        Lower-case identifier: the task name (``specq.<name>``), the table
        (``<name>_results``) and the settings (``SPECQ_<NAME>_QUEUE``…) derive from it.
    title : str
        Human name for messages and docs.
    instrument : {"boss", "apogee", "lamost", "gaia_rvs", "gaia_xp"}
        Which spectra of a file the pipeline takes (the readers pick the HDUs by it).
    schema : ResultSchema
        The result, declared once.
    runner : str
        ``"module:Class"`` of the :class:`workers.pipeline.Pipeline` that runs it; imported
        only inside a worker (it may load torch).
    queue : str
        Default Celery queue (``SPECQ_<NAME>_QUEUE`` overrides).
    chunk_size : int
        Default references per message (``SPECQ_<NAME>_CHUNK_SIZE`` overrides).
    weights : tuple of str
        Names looked for inside ``SPECQ_WEIGHTS_DIR``, first found wins.
    default_draws : int
        Monte Carlo draws when a message names none (0: the pipeline draws nothing).
    min_draws : int
        The fewest draws the pipeline can work with.
    precisions : tuple of str
        Forward arithmetics the pipeline offers; the first is its default.
    coadds_only : bool
        The pipeline takes no visit spectra (the network was trained on coadds): the
        readers list a file's visits like any spectrum, and the pipeline refuses each
        with a flagged row.
    compare : tuple of str
        Fields ``specq bench`` compares between baseline and engine.
    summary_columns : tuple of str
        Columns ``specq demo`` prints.
    baseline : str, optional
        ``"module:function"``, called as ``function(pipeline, spectra, options)``: the
        straightforward way ``specq bench`` times the engine against.
    baseline_note : str
        Printed beside the bench's engine-against-baseline difference where the two are
        not meant to agree value for value (e.g. other random draws).
    plots : str, optional
        ``"module:NAME"`` of a sequence of ``(name, function)``: ``specq results plot`` and
        the demo write ``{pipeline}-{name}.png`` from ``function(table, show_bad)``, a
        matplotlib figure of an exported table. None: the pipeline draws no plots.
    precision_fields : tuple of str
        Fields ``specq bench --precision`` compares with float32 (empty: ``compare``).
    roofline : str, optional
        ``"module:function"``, called as ``function(pipeline, n_spectra, draws, tries)``
        and returning ``(spectra_per_s, gflops)``: the bench's upper bound for an engine
        that computes the network densely on this machine.
    options : tuple of Option
        The pipeline's own command-line options (see :class:`Option`).
    demo_inputs : str, optional
        ``"module:function"``, called as ``function(truth, folder)`` by ``specq demo``
        after it wrote its synthetic spectra (``truth`` is their table): writes what
        else the pipeline reads into ``folder`` and returns the settings that point to
        it, as ``{"SPECQ_…": value}``.
    message_extras : tuple of str
        Per-spectrum values a message may carry for this pipeline beside the spectrum's
        address (a reference's ``photometry``, e.g. AstroNN's ``k_mag``); the pipeline
        finds them in ``Spectrum.meta["ref_photometry"]``.
    chunk_folders : tuple of str
        Where published weight chunks sit inside a copy of the pipeline's published
        repository (``specq weights install`` looks there as well as in the folder given).
    demo_weights : str, optional
        ``"module:function"``, called as ``function(cache_dir)``: the path of seeded demo
        weights, written into ``cache_dir`` when absent (``SPECQ_DEMO_WEIGHTS``).
    """

    name: str
    title: str
    instrument: str
    schema: ResultSchema
    runner: str
    queue: str = "cpu"
    chunk_size: int = 32
    weights: tuple[str, ...] = ()
    default_draws: int = 0
    min_draws: int = 0
    precisions: tuple[str, ...] = ("float32",)
    coadds_only: bool = False
    compare: tuple[str, ...] = ()
    summary_columns: tuple[str, ...] = ()
    baseline: str | None = None
    baseline_note: str = ""
    # What the commands show and offer (plots, bench, options, demo); each has a default, so a
    # spec that leaves them out still runs through every command.
    plots: str | None = None
    precision_fields: tuple[str, ...] = ()
    roofline: str | None = None
    options: tuple[Option, ...] = ()
    demo_inputs: str | None = None
    # Declared by a pipeline's folder for the generic code; each has a default, so a spec
    # written without them still loads.
    message_extras: tuple[str, ...] = ()
    chunk_folders: tuple[str, ...] = ()
    demo_weights: str | None = None

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"pipeline name {self.name!r}: use a lower-case Python identifier")
        if self.instrument not in INSTRUMENTS:
            raise ValueError(f"pipeline {self.name}: instrument must be one of {INSTRUMENTS}, not {self.instrument!r}")
        if self.schema.pipeline != self.name:
            raise ValueError(f"pipeline {self.name}: its schema is declared for {self.schema.pipeline!r}")
        if ":" not in self.runner:
            raise ValueError(f"pipeline {self.name}: runner must be 'module:Class', not {self.runner!r}")
        if not self.schema.exception_flag:  # the bit of a spectrum that fails: every failed row sets it
            raise ValueError(f"pipeline {self.name}: its schema names no exception_flag (the flag a spectrum "
                             f"that could not be processed gets)")

    @property
    def task_name(self) -> str:
        """The Celery task's name."""
        return f"specq.{self.name}"

    def load_class(self) -> type:
        """The pipeline class (imports the runner's module: torch, in a worker)."""
        return _resolve(self.runner)

    def load_baseline(self):
        """The bench's baseline function, or None when the pipeline has none."""
        return _resolve(self.baseline) if self.baseline else None

    def load_plots(self) -> tuple:
        """``(name, function)`` pairs of the pipeline's plots (empty when it declares none)."""
        return tuple(_resolve(self.plots)) if self.plots else ()

    def load_roofline(self):
        """The bench's roofline function, or None when the pipeline has none."""
        return _resolve(self.roofline) if self.roofline else None

    def load_demo_inputs(self):
        """The demo's input writer, or None when the pipeline reads nothing beyond its spectra."""
        return _resolve(self.demo_inputs) if self.demo_inputs else None

    def options_for(self, command: str) -> tuple[Option, ...]:
        """The pipeline's own options that ``specq <command>`` takes."""
        return tuple(o for o in self.options if command in o.commands)
    def demo_weights_path(self, cache_dir: str | os.PathLike) -> Path | None:
        """The pipeline's seeded demo weights in ``cache_dir`` (written when absent); None when it has none."""
        return _resolve(self.demo_weights)(cache_dir) if self.demo_weights else None


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_registry: dict[str, PipelineSpec] = {}
_loaded_modules: set[str] = set()
# The names each spec module declared: a module's pipelines are listed only while the module
# is (built in, installed, or named in SPECQ_PLUGINS now), so one caller's plugins do not
# stay registered for the rest of the process.
_module_names: dict[str, tuple[str, ...]] = {}


def register(spec: PipelineSpec) -> PipelineSpec:
    """Add ``spec`` (a second spec under a taken name is an error, the same one is not)."""
    known = _registry.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"two pipelines named {spec.name!r}")
    _registry[spec.name] = spec
    return spec


class PluginError(ValueError):
    """A pipeline module that cannot be loaded: one line naming the module and where it was named."""


def _module_label(module: str) -> str:
    """``the pipeline module 'x' (named in SPECQ_PLUGINS)``: the start of a PluginError."""
    if module in plugin_modules():
        where = f"named in {PLUGINS_ENV}"
    elif module in _entry_point_modules():
        where = f"an installed package's {ENTRY_POINT_GROUP} entry point"
    else:
        where = "built in"
    return f"the pipeline module {module!r} ({where})"


def _raised_at(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the line of the plugin's code (or what it imports) that raised, else "".

    The one-line error has no traceback; a SyntaxError's text names its line already, and an
    import that found no module has no line of the plugin's to name.
    """
    if isinstance(exc, (SyntaxError, ModuleNotFoundError)):
        return ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    # A declaration specq refuses raises in specq's own code: name the plugin's line that declared it.
    outside = [f for f in frames if not any(Path(f.filename).resolve().is_relative_to(p) for p in _SPECQ_PACKAGES)]
    frame = (outside or frames or [None])[-1]
    return f" (at {frame.filename}:{frame.lineno})" if frame else ""


# specq's own packages (in site-packages after an install, beside the plugins)
_SPECQ_PACKAGES = tuple(Path(__file__).resolve().parent.parent / name for name in ("workers", "tasks", "specq"))


def _load_module(module: str) -> None:
    if module in _loaded_modules:
        return
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # deliberately broad: any mistake in a plugin's code is reported as one line
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        hint = (" (is its folder on PYTHONPATH?)" if missing and (module == missing or module.startswith(missing + "."))
                else "")
        raise PluginError(f"{_module_label(module)} cannot be loaded{hint}: {type(exc).__name__}: {exc}"
                          f"{_raised_at(exc)}") from exc
    specs = getattr(mod, "SPECS", None) or [getattr(mod, "SPEC", None)]
    if not all(isinstance(s, PipelineSpec) for s in specs):
        raise PluginError(f"{_module_label(module)} defines no SPEC (a PipelineSpec, from workers.api)")
    for s in specs:
        try:
            register(s)
        except ValueError as exc:  # a name another pipeline has
            raise PluginError(f"{_module_label(module)}: {exc}") from None
    _module_names[module] = tuple(s.name for s in specs)
    _loaded_modules.add(module)


@functools.lru_cache(maxsize=1)
def _entry_point_modules() -> tuple[str, ...]:
    """The installed packages' spec modules, looked up once a process: scanning every
    installed distribution costs tens of milliseconds, and the producer asks per file."""
    from importlib.metadata import entry_points

    return tuple(ep.value.partition(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP))


def plugin_modules() -> list[str]:
    """Spec modules named in ``SPECQ_PLUGINS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def pipelines() -> dict[str, PipelineSpec]:
    """Every registered pipeline by name: built-in, installed, then ``SPECQ_PLUGINS``."""
    active: set[str] = set()
    for module in (*BUILTIN_SPEC_MODULES, *_entry_point_modules(), *plugin_modules()):
        _load_module(module)
        active.update(_module_names.get(module, ()))
    from_modules = {n for names in _module_names.values() for n in names}
    return {n: s for n, s in _registry.items() if n in active or n not in from_modules}


def names() -> tuple[str, ...]:
    """The registered pipelines' names."""
    return tuple(pipelines())


def get(name: str) -> PipelineSpec:
    """The spec of pipeline ``name``.

    Raises
    ------
    ValueError
        No such pipeline; the message lists the known ones.
    """
    known = pipelines()
    if name not in known:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(known)}")
    return known[name]


def parse(text: str | tuple | list | None) -> list[str]:
    """``"bossnet,astronn_dist"`` (or ``"all"``, or None for all) → a checked list of names.

    Raises
    ------
    ValueError
        An unknown name, or nothing named.
    """
    known = pipelines()
    if text is None or text == "all":
        return list(known)
    items = text.split(",") if isinstance(text, str) else text
    chosen = [p.strip() for p in items if p.strip()]
    unknown = [p for p in chosen if p not in known]
    if unknown or not chosen:
        raise ValueError(f"unknown pipeline(s) {', '.join(unknown) if unknown else repr(text)}; "
                         f"choose from {', '.join(known)} or all")
    return list(dict.fromkeys(chosen))


def message_extras() -> tuple[str, ...]:
    """Every registered pipeline's message extras (what a reference's ``photometry`` may hold)."""
    return tuple(dict.fromkeys(key for spec in pipelines().values() for key in spec.message_extras))


def schemas() -> dict[str, ResultSchema]:
    """Every registered pipeline's result schema by name."""
    return {n: s.schema for n, s in pipelines().items()}
