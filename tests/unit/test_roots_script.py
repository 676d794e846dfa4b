# SPDX-License-Identifier: MIT
"""scripts/roots.sh: the free-threaded builds' sources are pinned, and a source that does not match
its pin is refused (no network, no build: a wrong file placed where the download would go)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOTS_SH = Path(__file__).resolve().parents[2] / "scripts" / "roots.sh"


def _table(name: str) -> dict[str, str]:
    text = ROOTS_SH.read_text()
    m = re.search(rf"^declare -A {name}=\((.*)\)$", text, re.M)
    assert m, f"no {name} in roots.sh"
    return dict(re.findall(r'\[([\w.]+)\]=("[^"]*"|\S+)', m.group(1)))


def test_every_free_threaded_build_has_one_pinned_source():
    pkg, root = _table("FT_PKG"), _table("FT_ROOT")
    version, sha = _table("FT_ZIP_VERSION"), _table("FT_ZIP_SHA256")
    assert {"ft3.13", "ft3.14"} <= set(pkg)
    for name in pkg:
        from_debian = root.get(name, '""').strip('"') != ""
        from_zip = name in version
        assert from_debian != from_zip, f"{name}: exactly one source (Debian's tarball or a pinned zip)"
        if from_zip:
            assert re.fullmatch(r"3\.\d+\.\d+", version[name]), version[name]
            assert re.fullmatch(r"[0-9a-f]{64}", sha.get(name, "")), f"{name}: no sha256 pin"
            assert version[name].startswith(name[2:] + "."), (name, version[name])


def test_a_source_that_does_not_match_its_pin_is_refused(tmp_path):
    version = _table("FT_ZIP_VERSION")["ft3.14"]
    bad = tmp_path / f"cpython-v{version}.zip"
    bad.write_bytes(b"not the pinned zip")
    env = {**os.environ, "TRACKLEAK_ROOTS": str(tmp_path), "TRACKLEAK_GOPROXY": "http://127.0.0.1:9"}
    r = subprocess.run(["bash", str(ROOTS_SH), "ensure", "ft3.14"], capture_output=True, text=True, env=env)
    assert r.returncode == 1, r.stderr
    assert "not the pinned" in r.stderr and "FT_ZIP_SHA256" in r.stderr, r.stderr
    assert not bad.exists() and not (tmp_path / "ft3.14").exists() and not (tmp_path / "ft3.14.src").exists()
