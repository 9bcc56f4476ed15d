"""The command line's parser: help that shows defaults, one-line errors, argument types, shared options.

Each command group (:mod:`specq.cli.run`, :mod:`specq.cli.queue`…) adds its own subcommands
with these pieces; the options a pipeline declares on its spec (``PipelineSpec.options``)
are added here, once each, whichever pipelines declare them.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

DEMO_WEIGHTS_HELP = ("where no published weights are installed, use seeded random demo weights "
                     "(not for science; also SPECQ_DEMO_WEIGHTS=1)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless it has none or the text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action)


class _Subcommands(argparse._SubParsersAction):
    """A command's subcommands, named by their choices (``{export,plot,summary}``) in the usage and
    in the error for a missing one, never by the attribute that holds the choice."""

    @property
    def metavar(self):
        return self._metavar if self._metavar is not None else "{" + ",".join(self.choices) + "}"

    @metavar.setter
    def metavar(self, value):
        self._metavar = value


class Parser(argparse.ArgumentParser):
    """specq's parsers (subcommands included): defaults in help; ``-v`` and ``--log-format`` anywhere."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("conflict_handler", "resolve")  # a subcommand may define its own -v
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)
        # SUPPRESS: an option given before the subcommand is not reset by the subcommand's parser.
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="log at INFO level")
        self.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                          help="log lines as text, or as JSON objects carrying the task id and the spectrum "
                               "(default: SPECQ_LOG_FORMAT, else text)")

    def error(self, message):
        """A bad command line in one line, without the usage block (exit status 2)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number of at least ``minimum`` (and at most ``maximum``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if minimum == 0 else f'at least {minimum}'}, "
                                             f"got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


non_negative, at_least_one = _whole_number(0), _whole_number(1)


def draws_count(text: str) -> int:
    """``--draws``: 0 to ``workers.pipeline.MAX_DRAWS`` (each pipeline checks its own least)."""
    from workers.pipeline import MAX_DRAWS

    return _whole_number(0, MAX_DRAWS)(text)


def _seconds(minimum_included: bool):
    """An argparse type: a finite number of seconds above 0 (or from 0, ``minimum_included``),
    at most ten years (``MAX_SECONDS``)."""

    def seconds(text: str) -> float:
        from workers.settings import MAX_SECONDS

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
        if value < 0 or (value == 0 and not minimum_included):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if minimum_included else 'more than 0'}, got {text}")
        if value > MAX_SECONDS:  # a typo: a wait that long would never end
            raise argparse.ArgumentTypeError(f"{text!r} is longer than ten years")
        return value

    return seconds


positive_seconds, non_negative_seconds = _seconds(False), _seconds(True)


def positive_rate(text: str) -> float:
    """An argparse type: a finite number above 0 (a rate per second; NaN or 0 would never pace)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


# -- help texts and options read from the pipelines' specs ----------------------------------
def pipelines_help(pipelines: dict) -> str:
    """``--pipeline``'s help for the commands that default to every registered pipeline."""
    return (f"one of {', '.join(pipelines)}, several comma-separated, or all (default: all registered, "
            f"{', '.join(pipelines)}: each file's HDUs go to the pipelines that take them)")


def draws_help(pipelines: dict, tail: str = ")") -> str:
    """``--draws``' help: each pipeline's default."""
    return "MC draws (default: each pipeline's, " + ", ".join(
        f"{n} {s.default_draws}" for n, s in pipelines.items()) + tail


def precisions(pipelines: dict) -> list[str]:
    """Every forward arithmetic some pipeline offers, in declaration order."""
    return list(dict.fromkeys(p for spec in pipelines.values() for p in spec.precisions))


def add_pipeline_options(parser: argparse.ArgumentParser, pipelines: dict, command: str) -> None:
    """The options that ``command`` takes from the pipelines' specs, each flag once."""
    declared: dict[str, list] = {}
    for name, spec in pipelines.items():
        for option in spec.options_for(command):
            declared.setdefault(option.flag, []).append((name, option))
    for flag, owners in declared.items():
        option = owners[0][1]
        names = ", ".join(name for name, _ in owners)
        parser.add_argument(flag, dest=_dest(option), metavar=None if option.choices else option.label.upper(),
                            choices=list(option.choices) or None,
                            help=f"{option.help} ({names})" if len(pipelines) > 1 else option.help)


def pipeline_options(args, spec, command: str) -> dict:
    """The values of ``spec``'s own options that the command line gave, as keywords of its class."""
    given = {o: getattr(args, _dest(o), None) for o in spec.options_for(command)}
    return {o.keyword: Path(value).expanduser() if o.is_file else value
            for o, value in given.items() if value is not None}


def given_options(args, pipelines: dict, command: str) -> list:
    """``(option, value)`` of every pipeline option the command line gave (each flag once)."""
    given = {o.flag: (o, getattr(args, _dest(o))) for spec in pipelines.values() for o in spec.options_for(command)
             if getattr(args, _dest(o), None) is not None}
    return list(given.values())


def _dest(option) -> str:
    # Named after the flag: two pipelines declaring one flag share its value.
    return "pipeline_" + option.flag.lstrip("-").replace("-", "_")


def add_sdss_names(parser: argparse.ArgumentParser) -> None:
    """``--release``, ``--product``, ``--table`` and the positional files (or name=value keywords)."""
    parser.add_argument("--release", help="SDSS data release of spectra named by --product (e.g. dr19; needs "
                                          "specq[sdss]); paths are relative to the archive root, the data root")
    parser.add_argument("--product", help="SDSS product: specLite, mwmStar, mwmVisit or apStar; its keywords "
                                          "follow as name=value (e.g. run2d=v6_1_3 fieldid=101077 …)")
    parser.add_argument("--table", help="target table (CSV, FITS, Parquet): one spectrum per row, from the "
                                        "columns named like the keywords; k_mag, ebv, plx, e_plx and ids travel too")
    parser.add_argument("files", nargs="*", help="spectrum files, or with --product its keywords as name=value")
