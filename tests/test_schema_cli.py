"""``specq schema``: one pipeline's schema, JSON, and what a result_flags value means."""
from __future__ import annotations

import json

import pytest

from specq.cli import main
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.bossnet.schema import BOSSNET_SCHEMA


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["schema", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_pipeline_prints_the_shared_columns_and_its_own_only(capsys):
    code, out, _ = _run(capsys, "--pipeline", "astronn_dist")
    assert code == 0
    assert "### Every pipeline" in out and "### `astronn_dist`" in out
    assert "### `bossnet`" not in out and "`nn_dist`" in out


def test_json_holds_every_field_and_flag_of_the_declaration(capsys):
    code, out, _ = _run(capsys, "--pipeline", "bossnet,astronn_dist", "--json")
    assert code == 0
    data = json.loads(out)
    assert list(data["pipelines"]) == ["bossnet", "astronn_dist"]
    for schema in (BOSSNET_SCHEMA, ASTRONN_DIST_SCHEMA):
        got = data["pipelines"][schema.pipeline]
        assert [f["name"] for f in got["fields"]] == [f.name for f in schema.all_fields]
        assert [f["unit"] for f in got["fields"]] == [f.unit for f in schema.all_fields]
        assert [(f["name"], f["bit"], f["value"]) for f in got["flags"]] == \
            [(f.name, f.bit, 1 << f.bit) for f in schema.flags]
        assert got["bad_bits"] == list(schema.bad_bits)
    assert [f["name"] for f in data["shared"]["flags"]] == ["result_flags", "flag_warn", "flag_bad"]
    assert "path" in [f["name"] for f in data["shared"]["place"]]


def test_flags_names_each_bit_and_says_warn_or_bad(capsys):
    schema = ASTRONN_DIST_SCHEMA
    warn_only = schema.flag("flag_missing_extinction").value
    code, out, _ = _run(capsys, "--pipeline", "astronn_dist", "--flags", str(warn_only))
    assert code == 0 and out.strip() == f"astronn_dist: {warn_only} = flag_missing_extinction (warn)"
    value = schema.flag("flag_fakemag_unreliable").value | warn_only | 1 << 40
    code, out, _ = _run(capsys, "--pipeline", "astronn_dist", "--flags", hex(value), "--json")
    (decoded,) = json.loads(out)
    assert decoded == {"pipeline": "astronn_dist", "result_flags": value,
                       "flags": ["flag_fakemag_unreliable", "flag_missing_extinction"],
                       "undeclared_bits": [40], "flag_warn": True, "flag_bad": True}
    code, out, _ = _run(capsys, "--pipeline", "bossnet", "--flags", "0")
    assert out.strip() == "bossnet: 0 = no flag (good)"


@pytest.mark.parametrize("value, words", [("abc", "not a whole number: 'abc'"), ("-1", "0 to 2**63 - 1"),
                                          (str(2**63), "0 to 2**63 - 1")])
def test_a_bad_flags_value_is_one_line(capsys, value, words):
    code, out, err = _run(capsys, "--flags", value)
    assert code == 2 and out == "" and words in err and err.count("\n") == 1
