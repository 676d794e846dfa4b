# SPDX-License-Identifier: MIT
"""Where the installed preload shim (trackleak.so) lives.

``pip install`` compiles ``preload/src/*.c`` into the package as ``trackleak/_preload/trackleak.so``
(setup.py); an editable install puts it at ``agent/_preload/trackleak.so`` in the source tree.
``TRACKLEAK_SO`` overrides the location (a shim built by ``make build``, or another build).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import ShimMissingError

ENV_OVERRIDE = "TRACKLEAK_SO"
SHIM_NAME = "trackleak.so"


def packaged_shim_path() -> Path:
    """Where the package keeps its shim (the file may be absent)."""
    try:
        from importlib.resources import files
    except ImportError:  # Python < 3.9 is not supported; keep the message clear anyway
        return Path(__file__).resolve().parent / "_preload" / SHIM_NAME
    root = files(__package__ or "trackleak")
    return Path(str(root.joinpath("_preload").joinpath(SHIM_NAME)))


def shim_path(environ: Mapping[str, str] | None = None) -> Path:
    """Absolute path of the shim to preload; ShimMissingError says how to get one."""
    env = os.environ if environ is None else environ
    override = env.get(ENV_OVERRIDE)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ShimMissingError(f"{ENV_OVERRIDE}={override} does not name a file")
        return path.resolve()
    path = packaged_shim_path()
    if not path.is_file():
        raise ShimMissingError(
            f"the preload shim is missing ({path}); rebuild it: run `pip install .` "
            "(or `pip install -e .`) again, or `make build`; needs a C compiler"
        )
    return path.resolve()
