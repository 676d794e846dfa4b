# SPDX-License-Identifier: MIT
"""Finding the installed shim (no shim needed: the lookup and its messages)."""

from __future__ import annotations

import pytest

from trackleak import shim
from trackleak.errors import ShimMissingError


def test_override_with_trackleak_so(tmp_path):
    so = tmp_path / "custom.so"
    so.write_bytes(b"")
    assert shim.shim_path({"TRACKLEAK_SO": str(so)}) == so.resolve()
    with pytest.raises(ShimMissingError, match="does not name a file"):
        shim.shim_path({"TRACKLEAK_SO": str(tmp_path / "nope.so")})


def test_packaged_location_is_inside_the_package():
    path = shim.packaged_shim_path()
    assert path.name == "trackleak.so" and path.parent.name == "_preload"
    assert (path.parent.parent / "__init__.py").exists()  # the trackleak package itself


def test_missing_packaged_shim_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(shim, "packaged_shim_path", lambda: tmp_path / "_preload" / "trackleak.so")
    with pytest.raises(ShimMissingError, match="pip install"):
        shim.shim_path({})
