# SPDX-License-Identifier: MIT
"""Unit tests: no root, no network, no built shim (a C compiler only where a test says so)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo() -> Path:
    return REPO
