"""A pipeline's result declaration is checked when it is made, and a plugin that cannot load
stops a command in one line: a mistake found later overwrites columns or fails every row."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from workers.api import Field, Flag, ResultSchema


def _schema(fields=(Field("peak", "float", "", "Peak"),), flags=(Flag("flag_low", 0, "Low"),), warn=("flag_low",),
            bad=(), exception_flag=""):
    return ResultSchema(pipeline="p", description="", fields=fields, flags=flags, warn_bits=warn, bad_bits=bad,
                        exception_flag=exception_flag)


@pytest.mark.parametrize("mistake,words", [
    (dict(fields=(Field("row", "float", "", "x"),)), "row would overwrite specq's own columns"),
    (dict(fields=(Field("error", "str", "", "x"),)), "error would overwrite"),
    (dict(fields=(Field("a", "float", "", "x"), Field("a", "float", "", "y"))), "a are declared more than once"),
    (dict(fields=(Field("a", "integer", "", "x"),)), "type 'integer'; use one of float, int"),
    (dict(flags=(Flag("flag_low", 1, "Low"), Flag("flag_few", 1, "Few"))), "bit 1 is declared by flag_low, flag_few"),
    (dict(flags=(Flag("flag_low", 63, "Low"),)), "bits run from 0 to 62"),
    (dict(flags=(Flag("flag_low", 0, "Low"), Flag("flag_low", 1, "Again"))), "flag_low are declared more than once"),
    (dict(flags=(Flag("peak", 0, "Named like a field"),), warn=()), "named like a column"),
    (dict(warn=("flag_lo",)), "warn_bits names 'flag_lo', which no flag declares"),
    (dict(bad=("flag_x",)), "bad_bits names 'flag_x'"),
    (dict(exception_flag="flag_failed"), "exception_flag names 'flag_failed'"),
    (dict(fields=(Field("elapsed", "float", "s", "x"),)), "elapsed would overwrite"),  # t_elapsed's former name
    (dict(fields=(Field("apogee_id", "str", "", "x"),)), "apogee_id would overwrite"),  # obj's former name
    (dict(fields=(Field("Error", "str", "", "x"),)), "Error would overwrite"),  # SQLite ignores case
    (dict(fields=(Field("a", "float", "", "x"), Field("A", "float", "", "y"))), "A, a are declared more than once"),
    (dict(flags=(Flag("snr", 0, "Named like a source column"),), warn=()), "snr are named like a column"),
])
def test_a_schema_mistake_is_refused_when_declared(mistake, words):
    with pytest.raises(ValueError, match="the result schema of 'p'") as refused:
        _schema(**mistake)
    assert words in str(refused.value)


def test_a_pipeline_field_may_replace_a_source_column():
    assert [f.name for f in _schema(fields=(Field("snr", "float", "", "The pipeline's own S/N"),)).all_fields] == ["snr"]


PLUGIN = textwrap.dedent('''
    from workers.api import Field, Flag, PipelineSpec, ResultSchema

    SCHEMA = ResultSchema(pipeline="bad", description="", fields=(Field("x", "float", "", "x"),),
                          flags=(Flag("flag_a", 0, "a"), Flag("flag_b", 0, "b")), warn_bits=(), bad_bits=())
    SPEC = PipelineSpec(name="bad", instrument="boss", schema=SCHEMA, runner="bad_plugin:Bad")
''')


@pytest.mark.parametrize("module,words", [
    ("bad_plugin", "'bad_plugin' (named in SPECQ_PLUGINS) cannot be loaded: ValueError: the result schema of 'bad': "
                   "bit 0 is declared by flag_a, flag_b"),
    ("no_such_plugin", "'no_such_plugin' (named in SPECQ_PLUGINS) cannot be loaded (is its folder on PYTHONPATH?)"),
    ("empty_plugin", "'empty_plugin' (named in SPECQ_PLUGINS) defines no SPEC"),
])
def test_a_plugin_that_cannot_load_stops_every_command_in_one_line(tmp_path, module, words):
    (tmp_path / "bad_plugin.py").write_text(PLUGIN)
    (tmp_path / "empty_plugin.py").write_text("X = 1\n")
    env = {**os.environ, "SPECQ_PLUGINS": module, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
           "SPECQ_STATE_DIR": str(tmp_path / "state")}
    for command in (["--help"], ["schema"]):
        done = subprocess.run([sys.executable, "-m", "specq.cli", *command], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr


def test_a_pipeline_names_the_flag_of_a_failed_spectrum():
    from workers.api import PipelineSpec

    with pytest.raises(ValueError, match="names no exception_flag"):
        PipelineSpec(name="p", title="P", instrument="boss", schema=_schema(), runner="m:C")


TAKEN = textwrap.dedent('''
    from workers.api import Field, Flag, PipelineSpec, ResultSchema

    SCHEMA = ResultSchema(pipeline="bossnet", description="", fields=(Field("x", "float", "", "x"),),
                          flags=(Flag("flag_failed", 0, "failed"),), warn_bits=(), bad_bits=("flag_failed",),
                          exception_flag="flag_failed")
    SPEC = PipelineSpec(name="bossnet", title="Taken", instrument="boss", schema=SCHEMA, runner="taken_plugin:Taken")
''')


def test_a_plugin_with_a_taken_name_or_a_missing_dependency_is_one_line(tmp_path):
    (tmp_path / "taken_plugin.py").write_text(TAKEN)
    (tmp_path / "needs_plugin.py").write_text("import needs_plugin_helper_missing\n")
    for module, words in (("taken_plugin", "'taken_plugin' (named in SPECQ_PLUGINS): two pipelines named 'bossnet'"),
                          ("needs_plugin", "'needs_plugin' (named in SPECQ_PLUGINS) cannot be loaded: "
                                           "ModuleNotFoundError")):
        env = {**os.environ, "SPECQ_PLUGINS": module, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
               "SPECQ_STATE_DIR": str(tmp_path / "state")}
        done = subprocess.run([sys.executable, "-m", "specq.cli", "schema"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert "PYTHONPATH" not in done.stderr  # the module was found; what it imports was not


def test_a_plugin_error_names_the_plugin_line_that_raised(tmp_path):
    (tmp_path / "typo_plugin.py").write_text("X = 1\ny = undefined_name\n")
    (tmp_path / "bad_plugin.py").write_text(PLUGIN)
    declared_at = PLUGIN.splitlines().index(next(line for line in PLUGIN.splitlines() if "ResultSchema(" in line
                                                 and "import" not in line)) + 1
    for module, words in (("typo_plugin", f"NameError: name 'undefined_name' is not defined "
                                          f"(at {tmp_path / 'typo_plugin.py'}:2)"),
                          ("bad_plugin", f"give each flag its own bit (at {tmp_path / 'bad_plugin.py'}:{declared_at})")):
        env = {**os.environ, "SPECQ_PLUGINS": module, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
               "SPECQ_STATE_DIR": str(tmp_path / "state")}
        done = subprocess.run([sys.executable, "-m", "specq.cli", "schema"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
