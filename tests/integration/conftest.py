# SPDX-License-Identifier: MIT
"""Fixtures of the integration tests: the built shim, a C compiler, a private log dir.

Everything collected under tests/integration/ carries the ``integration`` marker. A missing shim or
compiler makes the tests ERROR with a message saying what to do; nothing is silently skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ShimNotFound, find_cc, resolve_shim

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    for item in items:
        path = Path(str(getattr(item, "path", None) or item.fspath))
        if HERE in path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def shim() -> Path:
    """Path of the built preload shim: $TRACKLEAK_SO, else trackleak.shim.shim_path()."""
    try:
        return resolve_shim()
    except ShimNotFound as exc:
        pytest.fail(
            f"preload shim not found: {exc}. Build it (`make build`, or `pip install -e .`) "
            "or point TRACKLEAK_SO at a built trackleak.so.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def cc() -> str:
    """The C compiler used to build test extensions and programs (an error if there is none)."""
    try:
        return find_cc()
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A fresh, empty TRACKLEAK_LOG_DIR for one test."""
    path = tmp_path / "logs"
    path.mkdir()
    return path
