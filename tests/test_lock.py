"""The install is the lock: the README's Quick start, `.ci/run`, `make install` and the Dockerfile
install exactly requirements/*.txt, which pins with hashes every dependency pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
_PINNED = re.compile(r"^([A-Za-z0-9_.-]+)==\S+(?: ;[^\\\n]*)? \\\n    --hash=sha256:", re.M)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pinned(lock: str) -> set[str]:
    text = (ROOT / "requirements" / lock).read_text()
    pinned = _PINNED.findall(text)
    assert len(re.findall(r"^\S+==", text, re.MULTILINE)) == len(pinned)  # each with its hashes
    return {name.lower().replace("_", "-") for name in pinned}


def test_every_dependency_is_locked_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    build = {_name(r) for r in (ROOT / "requirements" / "build.in").read_text().splitlines()
             if r.strip() and not r.startswith("#")}  # fmt: skip
    assert runtime <= _pinned("main.txt")
    assert runtime | dev | build <= _pinned("dev.txt")
    assert "--hash=sha256:" in (ROOT / "requirements" / "dev.txt").read_text()


def test_quick_start_ci_and_make_install_the_lock_the_same_way() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    install = quick_start.strip().splitlines()[0]
    assert install == (
        "python3 -m venv .venv && .venv/bin/pip install --require-hashes -r requirements/dev.txt"
        " && .venv/bin/pip install --no-deps --no-build-isolation -e ."
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install --quiet --require-hashes -r requirements/dev.txt" in ci
    assert ".venv/bin/pip install --quiet --no-deps --no-build-isolation -e ." in ci
    assert "pip install -e" not in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.txt" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("--require-hashes") == 2
