"""Reproducible installs and images, checked without building: the lock files cover pyproject.toml and
agree with each other; the Dockerfiles install from them and carry the fixes that building and running
them with buildah/podman called for (scripts/build_image.sh and scripts/smoke_image.sh do the real thing).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVE_LOCK = ROOT / "requirements" / "serve.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
LOADTESTS_LOCK = ROOT / "loadtests" / "requirements.lock"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOADTESTS_DOCKERFILE = (ROOT / "loadtests" / "Dockerfile").read_text()
DOCKER_DEFAULT_STOP_TIMEOUT_S = 10
# Left out of every lock on purpose (scripts/lock.sh): pinned in pyproject.toml, its build (CPU or CUDA)
# chosen by the index it is installed from.
UNLOCKED = {"torch"}


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line):
            found[canonicalize_name(match[1])] = match[2]
    return found


def assert_covered(requirements: list[str], lock: dict[str, str], where: str) -> None:
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED:
            assert name not in lock, f"{where}: {name} should not be locked"
            continue
        assert name in lock, f"{where}: {name} is not locked (run scripts/lock.sh)"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{where}: {name}=={lock[name]} does not satisfy {requirement.specifier} (run scripts/lock.sh)"
        )


def test_serve_lock_covers_the_dependencies() -> None:
    assert_covered(PYPROJECT["project"]["dependencies"], pins(SERVE_LOCK), "requirements/serve.lock")


def test_dev_lock_covers_dependencies_and_dev_extras_and_agrees_with_the_serve_lock() -> None:
    dev, serve = pins(DEV_LOCK), pins(SERVE_LOCK)
    assert_covered(PYPROJECT["project"]["dependencies"], dev, "requirements/dev.lock")
    assert_covered(PYPROJECT["project"]["optional-dependencies"]["dev"], dev, "requirements/dev.lock")
    differ = {
        name: (serve[name], dev[name]) for name in serve.keys() & dev.keys() if serve[name] != dev[name]
    }
    assert not differ, f"serve.lock and dev.lock disagree: {differ}"


def test_loadtests_lock_pins_locust_and_the_services_numpy_and_scikit_learn() -> None:
    lock, serve = pins(LOADTESTS_LOCK), pins(SERVE_LOCK)
    assert lock["locust"] == "2.47.0"
    assert lock["numpy"] == serve["numpy"] and lock["scikit-learn"] == serve["scikit-learn"]
    assert_covered(
        [
            line
            for line in (ROOT / "loadtests" / "requirements.in").read_text().splitlines()
            if line and not line.startswith("#")
        ],
        lock,
        "loadtests/requirements.lock",
    )


def test_ci_and_images_install_from_the_locks() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "requirements/serve.lock" in setup and "requirements/dev.lock" in setup and '-c "$lock"' in setup
    assert "-r requirements/serve.lock" in DOCKERFILE
    assert re.search(r"pip install --no-cache-dir --no-deps \. && pip check", DOCKERFILE)
    assert "-r /tmp/requirements.lock" in LOADTESTS_DOCKERFILE
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!requirements/serve.lock" in dockerignore and "!wheelhouse" in dockerignore


def test_dockerfiles_build_offline_from_any_debian_base() -> None:
    for text in (DOCKERFILE, LOADTESTS_DOCKERFILE):
        assert not re.search(r"^#\s*syntax=", text, re.MULTILINE), (
            "a syntax line makes docker fetch a frontend"
        )
        assert "ARG PYTHON_IMAGE=" in text
        assert re.findall(r"^FROM (\S+)", text, re.MULTILINE)[0] == "${PYTHON_IMAGE}"
        assert "python3 -m venv" in text  # Debian's python3 or the python image's: both have it
    assert not re.search(r"tini=", DOCKERFILE), "a Debian revision pin exists on one release only"
    assert "COPY wheelhouse/ /wheelhouse/" in DOCKERFILE and "--find-links /wheelhouse" in DOCKERFILE
    assert "ARG PIP_CERT=" in DOCKERFILE
    assert (ROOT / "wheelhouse" / "README.md").exists()
    assert "/wheelhouse/*.whl" in (ROOT / ".gitignore").read_text()


def test_the_images_drain_fits_the_stop_timeouts() -> None:
    grace = int(re.search(r"HOOKSERVE_SERVER__SHUTDOWN_GRACE_S=(\d+)", DOCKERFILE)[1])
    assert grace + 2 <= DOCKER_DEFAULT_STOP_TIMEOUT_S  # docker stop / docker run / podman stop: 10 s
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["hookserve"]
    compose_grace = int(compose["environment"]["HOOKSERVE_SERVER__SHUTDOWN_GRACE_S"])
    assert int(compose["stop_grace_period"].rstrip("s")) >= compose_grace + 5


def test_loadtests_image_runs_locust_as_uid_1000() -> None:
    assert re.findall(r"^USER (\S+)", LOADTESTS_DOCKERFILE, re.MULTILINE)[-1] == "1000"
    assert 'ENTRYPOINT ["locust"]' in LOADTESTS_DOCKERFILE


@pytest.mark.parametrize(
    "script", ["build_image.sh", "smoke_image.sh", "lock.sh", "install_debian.sh", "setup.sh", "test.sh"]
)
def test_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", ROOT / "scripts" / script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
