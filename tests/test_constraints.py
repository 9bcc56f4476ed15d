"""Reproducible installs: every machine tests the versions in constraints.txt; users keep ranges."""
from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

# Pinned on purpose in pyproject.toml itself (see its comments): the CPU torch wheel, astroNN.
PINNED_BY_DESIGN = {"torch", "astronn"}


def _pins(marked: bool = True) -> dict[str, Version]:
    """name → the version pinned for this Python (``marked=False``: only pins without a marker)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin = Requirement(line)
            exact = [s.version for s in pin.specifier if s.operator == "=="]
            assert len(exact) == 1 and len(pin.specifier) == 1, f"constraints.txt: {line!r} is not name==version"
            if pin.marker is None or (marked and pin.marker.evaluate()):
                name = canonicalize_name(pin.name)
                assert name not in pins, f"constraints.txt pins {name} twice for this Python"
                pins[name] = Version(exact[0])
    return pins


def test_every_pin_installs_on_the_oldest_python_the_project_claims():
    """A pin whose release needs a newer Python than pyproject's requires-python (soupsieve 4
    needs 3.11.5, Debian 12 has 3.11.2) makes pip backtrack for minutes and fail without
    naming Python: such a pin carries a marker and another pin for the older Pythons."""
    from importlib.metadata import distributions

    from packaging.specifiers import SpecifierSet

    claimed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = Version(re.fullmatch(r">=\s*([0-9.]+)", claimed).group(1))
    unmarked = _pins(marked=False)
    checked = 0
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"])
        needs = dist.metadata.get("Requires-Python")
        if name in unmarked and needs:
            checked += 1
            assert SpecifierSet(needs).contains(oldest), \
                f"constraints.txt pins {name}=={unmarked[name]}, which needs Python {needs}; pyproject claims {claimed}"
    assert checked > 50  # the pins of this environment were looked at


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["worker"], *extras["postgres"],
                                     *extras["test"]]]


def test_every_dependency_is_pinned_within_the_packages_ranges():
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        for extra in requirement.extras:  # celery[redis] → redis, pinned too
            # psycopg[binary] and moto[server] name feature sets, not packages of their own.
            assert canonicalize_name(extra) in pins or extra in ("binary", "server"), f"{name}[{extra}]"
    assert canonicalize_name("specq") not in pins  # the project itself is what is tested


def test_users_keep_ranges():
    for requirement in _requirements():
        exact = [s for s in requirement.specifier if s.operator in ("==", "===")]
        assert not exact or canonicalize_name(requirement.name) in PINNED_BY_DESIGN, str(requirement)


def test_make_ci_and_images_install_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and '"pip>=' not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"^\$\(STAMP\):.*constraints\.txt", makefile, flags=re.M)  # a new pin reinstalls
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for flavour in ("cpu", "gpu"):
        dockerfile = (ROOT / "deploy" / f"Dockerfile.{flavour}").read_text()
        assert re.search(r'pip install -c /src/constraints\.txt "/src\[worker,postgres(,[a-z]+)*\]"', dockerfile), flavour
        ignored = (ROOT / "deploy" / f"Dockerfile.{flavour}.dockerignore").read_text().split()
        assert "constraints.txt" not in ignored and "*.txt" not in ignored
