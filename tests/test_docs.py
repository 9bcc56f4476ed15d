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


README = DOC.parents[1] / "README.md"
GUIDES = sorted(DOC.parent.glob("*.md"))


def test_the_readme_is_a_first_page():
    text = README.read_text()
    assert len(text.splitlines()) < 150, "the README is a five-minute read: move details into docs/"
    assert "make demo" in text and "make test" in text
    for call in ("specq.predict(", "specq.results(", "specq.submit("):
        assert call in text


def test_the_operations_guide_says_what_each_failure_loses_and_the_readme_sets_the_timeout():
    text = (DOC.parent / "operations.md").read_text()
    table = text[text.index("| failure | what is lost | how it comes back |"):].split("\n\n")[0]
    failures = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    for failure in ("a worker killed", "Redis restarted, with AOF", "Redis restarted without AOF", "PostgreSQL down",
                    "a full disk"):
        assert any(f.startswith(failure) for f in failures), (failure, failures)
    assert "docs/operations.md" in README.read_text()
    assert "export SPECQ_VISIBILITY_TIMEOUT=" in README.read_text()  # the queue example: minutes, said
    assert "FLOWER_UNAUTHENTICATED_API=true" in text  # Flower's HTTP API answers 401 without it


def test_the_readmes_links_lead_somewhere():
    import re

    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", README.read_text()) if "://" not in t]
    assert targets
    missing = [t for t in targets if not (README.parent / t.partition("#")[0]).exists()]
    assert missing == []


def test_the_docs_speak_of_the_product_only():
    import re

    history = re.compile(r"\(session\b|\bsession \d|\bissue \d|\bsprint\b", re.IGNORECASE)
    found = [f"{p.name}: {m.group(0)}" for p in [README, *GUIDES] for m in history.finditer(p.read_text())]
    assert found == []


def test_the_python_guide_runs(tmp_path, monkeypatch):
    """docs/python.md's notebook session runs as written (on synthetic spectra, demo weights)."""
    import re

    text = (DOC.parent / "python.md").read_text()
    cells = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(cells) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPECQ_DATABASE_URL", f"sqlite:///{tmp_path / 'r.sqlite'}")
    from workers.store import ResultStore

    store = ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}")  # the store the guide's workers write
    with store.engine.connect():
        pass
    store.engine.dispose()
    namespace: dict = {}
    # The first cell shows the calls with a user's own data and services; the session follows.
    for cell in cells[1:]:
        exec(compile(cell, "docs/python.md", "exec"), namespace)
    assert len(namespace["both"]) == len(namespace["truth"])
    assert set(namespace["both"]["pipeline"]) == {"bossnet", "astronn_dist"}
    assert len(namespace["from_specutils"]) == 2 and len(namespace["one"]) == 1
    assert list(namespace["named"]["sdss_id"]) == [42] and not namespace["named"]["flag_bad"].any()
    assert (tmp_path / "distances.fits").exists()


def test_the_python_guide_writes_files_with_specqs_writer():
    """astropy's FITS writer refuses non-ASCII text and knows no summary-file layout: the guide shows specq's."""
    import re

    text = (DOC.parent / "python.md").read_text()
    assert re.findall(r"\.write\([^)]*\.fits", text) == []
    assert 'specq.write_results(rows, "distances.fits")' in text


def test_the_least_data_each_pipeline_answers_for_is_stated_as_declared():
    from workers.astronn_dist.minimum import MINIMUM as ASTRONN
    from workers.bossnet.minimum import MINIMUM as BOSSNET

    text = (DOC.parent / "operations.md").read_text()
    for minimum in (BOSSNET, ASTRONN):
        low, high = minimum.wavelength_range
        row = (f"| {minimum.pipeline} | {low:.0f}–{high:.0f} Å | ≥ {minimum.min_good_pixels} | "
               f"≥ {minimum.min_coverage * 100:.0f} % | median > 0 |")
        assert row in text, row
