"""The documentation of the result columns is built from the declared schemas."""
from pathlib import Path

from workers.schema import shared_markdown
from workers.store import schemas

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def test_results_doc_is_generated_from_the_schemas():
    expected = shared_markdown() + "\n" + "".join(s.as_markdown() + "\n" for s in schemas().values())
    assert DOC.read_text() == expected, "docs/results.md is stale: run `specq schema > docs/results.md`"


def test_every_flag_bit_is_unique_and_summaries_name_declared_flags():
    for schema in schemas().values():
        bits = [f.bit for f in schema.flags]
        assert len(bits) == len(set(bits))
        names = {f.name for f in schema.flags}
        assert set(schema.warn_bits) <= names and set(schema.bad_bits) <= names
