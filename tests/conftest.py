# SPDX-License-Identifier: MIT
"""Shared pytest set-up: markers, the ``trackleak`` import, and discovery of every local CPython.

``cpython`` is a session-scoped parametrized fixture: one param per interpreter >= 3.9 found on this
machine (every ``$(pyenv root)/versions/*/bin/python`` plus Debian's ``/usr/bin/python3.11``, and
the interpreters of ``scripts/roots.sh``: the Debian roots' launchers (3.13, 3.14, 3.15, static, with
their own glibc) and the free-threaded builds (3.13t, 3.14t)), with ids like ``3.12.1``,
``3.11.2-static`` or ``3.13.5t``. Finding none is an error, never a skip: a CI run must not silently
test nothing. ``TRACKLEAK_TEST_PYTHONS=3.12,static`` narrows the list (substrings of ids).

A root that ``scripts/test.sh`` could not make (``roots.sh ensure`` failed: the mirror unreachable,
say) is written to ``TRACKLEAK_ROOTS_FAILED`` ("NAME: reason" lines, a file): each becomes a param
of its own whose tests fail with that reason, so a missing interpreter is never a silent skip.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# `import helpers` from any test module, whatever pytest's import mode.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def _ensure_trackleak_importable() -> None:
    """Use the installed package; without one, load `trackleak` from agent/ (the source tree)."""
    try:
        import trackleak  # noqa: F401

        return
    except ImportError:
        pass
    init = REPO_ROOT / "agent" / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "trackleak", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["trackleak"] = module
    spec.loader.exec_module(module)


_ensure_trackleak_importable()

from helpers import Interpreter  # noqa: E402

MIN_VERSION = (3, 9)
EXTRA_INTERPRETERS = ("/usr/bin/python3.11", "/usr/bin/python3")  # Debian's (statically linked) CPython

_PROBE = r"""
import json, sys, sysconfig
maps = open("/proc/self/maps").read()
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "version_info": list(sys.version_info[:3]),
    "static": "libpython" not in maps,
    "include": sysconfig.get_paths()["include"],
    "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX") or ".so",
    "executable": sys.executable,
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
}))
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the built shim and real interpreters (tests/integration)"
    )


def _pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return Path.home() / ".pyenv"


ROOTS_SH = REPO_ROOT / "scripts" / "roots.sh"


def _root_interpreters() -> list:
    """The interpreters of the ready roots and builds (scripts/roots.sh pythons)."""
    try:
        out = subprocess.run(["bash", str(ROOTS_SH), "pythons"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" ", 1)[1] for line in out.stdout.splitlines() if " " in line]


def roots_failed() -> dict:
    """NAME -> why scripts/test.sh could not make that root (TRACKLEAK_ROOTS_FAILED)."""
    path = os.environ.get("TRACKLEAK_ROOTS_FAILED")
    if not path or not os.path.exists(path):
        return {}
    failed = {}
    for line in Path(path).read_text().splitlines():
        name, _, why = line.partition(": ")
        if name.strip():
            failed[name.strip()] = why.strip() or "roots.sh ensure failed"
    return failed


def _candidates() -> list:
    versions = _pyenv_root() / "versions"
    found = sorted(str(p) for p in versions.glob("*/bin/python")) if versions.is_dir() else []
    found += [p for p in EXTRA_INTERPRETERS if os.path.exists(p)]
    found += _root_interpreters()
    return found


def _probe(path: str) -> Interpreter | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "LD_PRELOAD"}
    try:
        out = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return Interpreter(
        path=path,
        version=info["version"],
        version_info=tuple(info["version_info"]),
        static=bool(info["static"]),
        include=info["include"],
        ext_suffix=info["ext_suffix"],
        free_threaded=bool(info.get("free_threaded")),
    )


@functools.cache
def discover_interpreters() -> tuple:
    """Every distinct CPython >= 3.9 here (deduplicated by real path), sorted by version."""
    seen, found = set(), []
    for path in _candidates():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        interp = _probe(path)
        if interp is not None and interp.version_info[:2] >= MIN_VERSION:
            found.append(interp)
    found.sort(key=lambda i: (i.version_info, i.static))
    wanted = [w.strip() for w in os.environ.get("TRACKLEAK_TEST_PYTHONS", "").split(",") if w.strip()]
    if wanted:
        found = [i for i in found if any(w in i.id for w in wanted)]
    return tuple(found)


def _ids(interps) -> list:
    ids, counts = [], {}
    for interp in interps:
        counts[interp.id] = counts.get(interp.id, 0) + 1
        ids.append(interp.id if counts[interp.id] == 1 else f"{interp.id}-{counts[interp.id]}")
    return ids


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cpython" not in metafunc.fixturenames:
        return
    interps = discover_interpreters()
    if not interps:
        narrowed = os.environ.get("TRACKLEAK_TEST_PYTHONS")
        raise pytest.UsageError(
            f"no CPython >= {'.'.join(map(str, MIN_VERSION))} found (looked at {_candidates()}"
            + (f", narrowed by TRACKLEAK_TEST_PYTHONS={narrowed!r}" if narrowed else "")
            + "); the integration tests need at least one (install one with pyenv)"
        )
    # @pytest.mark.cpythons(gil=True, min_version=(3, 14)) or (free_threaded=True): the
    # interpreters a test applies to.
    # Those it does not apply to get no test at all (not a skip on every run).
    for mark in metafunc.definition.iter_markers("cpythons"):
        if mark.kwargs.get("gil"):
            interps = tuple(i for i in interps if not i.free_threaded)
        if mark.kwargs.get("free_threaded"):
            interps = tuple(i for i in interps if i.free_threaded)
        if mark.kwargs.get("min_version"):
            interps = tuple(i for i in interps if i.version_info[:2] >= tuple(mark.kwargs["min_version"]))
    params = list(interps) + [MissingRoot(name, why) for name, why in sorted(roots_failed().items())]
    ids = _ids(interps) + [f"missing-{m.name}" for m in params[len(interps) :]]
    metafunc.parametrize("cpython", params, ids=ids, indirect=True, scope="session")


@dataclasses.dataclass(frozen=True)
class MissingRoot:
    """An interpreter scripts/roots.sh should have made and could not: its tests fail."""

    name: str
    why: str


@pytest.fixture(scope="session")
def cpython(request: pytest.FixtureRequest) -> Interpreter:
    """One local CPython >= 3.9 (parametrized over all of them)."""
    if isinstance(request.param, MissingRoot):
        pytest.fail(
            f"interpreter root {request.param.name} is missing: {request.param.why} "
            "(scripts/roots.sh ensure failed in scripts/test.sh; see its output)",
            pytrace=False,
        )
    return request.param


@pytest.fixture(scope="session")
def interpreters() -> tuple:
    """All local CPythons >= 3.9; an error (not a skip) when there is none."""
    interps = discover_interpreters()
    if not interps:
        pytest.fail(f"no CPython >= 3.9 found among {_candidates()}", pytrace=False)
    return interps


def pytest_report_header(config: pytest.Config) -> list:
    try:
        interps = discover_interpreters()
    except Exception as exc:  # never break the header
        return [f"trackleak: interpreter discovery failed: {exc!r}"]
    return [f"trackleak: CPythons: {', '.join(f'{i.id}={i.path}' for i in interps) or 'NONE'}"]
