"""The lock files in requirements/ pin what every install gets, and agree with pyproject.toml.

cpu.lock is the CPU image, gpu.lock the GPU image (faiss-gpu-cu12 in place of faiss-cpu), dev.lock the CPU set
plus the test extra (make setup, CI). A dependency added to pyproject without `make lock`, two locks that
disagree on a shared package, or a virtual environment that drifted from its lock fail here.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"


def read_lock(text: str) -> dict[str, str]:
    """name -> pinned version; every requirement must be `name==version` followed by its hashes."""
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=[^\s#])", text):
        lines = [line for line in entry.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            continue
        req = Requirement(lines[0].rstrip(" \\"))
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not pinned to one version: {lines[0]}"
        assert any("--hash=sha256:" in line for line in lines[1:]), f"no hash for {lines[0]}"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def lock(name: str) -> dict[str, str]:
    return read_lock((LOCKS / f"{name}.lock").read_text())


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(text) for text in project()["dependencies"]]
    for extra in extras:
        reqs += [Requirement(text) for text in project()["optional-dependencies"][extra]]
    reqs += [Requirement(line) for line in (LOCKS / "torch.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return reqs


def unmet(pins: dict[str, str], reqs: list[Requirement]) -> list[str]:
    problems = []
    for req in reqs:
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version}, pyproject wants {req.specifier}")
    return problems


@pytest.mark.parametrize(("name", "extras", "left_out"), [
    ("cpu", (), set()),
    ("dev", ("test",), set()),
    ("gpu", ("gpu",), {"faiss-cpu"}),
])
def test_each_lock_satisfies_pyproject(name, extras, left_out):
    pins = lock(name)
    reqs = [req for req in requirements(*extras) if canonicalize_name(req.name) not in left_out]
    assert not unmet(pins, reqs), f"requirements/{name}.lock is stale, run `make lock`: {unmet(pins, reqs)}"
    assert not left_out & pins.keys()


def test_a_stale_lock_is_found():
    pins = lock("cpu")
    assert unmet(pins, [Requirement("torch>=99")]) == [f"torch: locked {pins['torch']}, pyproject wants >=99"]
    assert unmet(pins, [Requirement("not-a-dependency-yet")]) == ["not-a-dependency-yet: not in the lock"]
    with pytest.raises(AssertionError, match="not pinned"):
        read_lock("numpy>=2 \\\n    --hash=sha256:00\n")
    with pytest.raises(AssertionError, match="no hash"):
        read_lock("numpy==2.4.6\n")


@pytest.mark.parametrize("other", ["dev", "gpu"])
def test_locks_agree_on_shared_packages(other):
    """The GPU image, the CPU image and CI run the same release of every package they share."""
    cpu, pins = lock("cpu"), lock(other)
    differ = {name: (cpu[name], pins[name]) for name in cpu.keys() & pins.keys() if cpu[name] != pins[name]}
    assert not differ
    assert pins["torch"] == cpu["torch"] and pins["ray"] == cpu["ray"]


def test_the_gpu_image_swaps_faiss():
    assert "faiss-gpu-cu12" in lock("gpu") and "faiss-cpu" not in lock("gpu")
    assert "faiss-cpu" in lock("cpu")


def test_this_environment_matches_the_lock():
    """make setup and CI install requirements/dev.lock; a package upgraded by hand since shows here."""
    drifted = []
    for name, version in lock("dev").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drifted.append(f"{name}: locked {version}, not installed")
            continue
        if installed != version:
            drifted.append(f"{name}: locked {version}, installed {installed}")
    assert not drifted, "run `make setup` (pip install -r requirements/dev.lock):\n" + "\n".join(drifted)


def pip_installs(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#")]


def loose_installs(lines: list[str]) -> list[str]:
    """pip installs that resolve packages outside a lock (pip upgrading itself is allowed)."""
    return [line for line in lines if not re.search(r"-r \S*(requirements/\S+\.lock|\$\(LOCK\))", line)
            and "--no-deps" not in line and "--upgrade pip" not in line]


def test_the_image_and_setup_install_only_from_a_lock():
    image = pip_installs((REPO / "infra" / "Dockerfile").read_text())
    makefile = (REPO / "Makefile").read_text()
    setup = pip_installs(makefile[makefile.index("$(STAMP):"):].split("\n\n")[0])
    assert image and setup
    assert loose_installs(image) == [] and loose_installs(setup) == []
    assert loose_installs(["RUN pip install --no-cache-dir ."]) == ["RUN pip install --no-cache-dir ."]
