# SPDX-License-Identifier: MIT
"""Build glue that pyproject.toml cannot express: the package list and the preload shim.

The shim (`preload/src/*.c`) is an ordinary shared object, not a CPython extension: it does not
link libpython and one build serves every interpreter (docs/design.md). It is declared as an
``Extension`` only so that setuptools places it for us, in the wheel for a regular install and in
the source tree (``agent/_preload/trackleak.so``, gitignored) for ``pip install -e .``; the
compile itself is the plain ``cc`` command below, not distutils' Python-extension flags.

Environment:
  CC                    compiler to use (default ``cc``)
  TRACKLEAK_SKIP_SHIM=1 install the Python package without the shim (for machines without a C
                        compiler that only run tests/unit); ``trackleak run`` then says the shim is
                        missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SHIM_EXT = "trackleak._preload.trackleak"  # -> trackleak/_preload/trackleak.so
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"]
LDLIBS = ["-ldl", "-lm"]


class ShimBuildError(SystemExit):
    """Stop the build with one readable line (pip shows it) instead of a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"\ntrackleak: cannot build the preload shim: {message}\n")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def shim_sources() -> list[str]:
    return sorted(_rel(p) for p in (ROOT / "preload" / "src").glob("*.c"))


class build_shim(build_ext):
    """build_ext whose one "extension" is the preload shim, compiled with plain cc."""

    def get_ext_filename(self, fullname: str) -> str:
        # A plain ".so", not ".cpython-311-x86_64-linux-gnu.so". setuptools asks with the full
        # dotted name, distutils' get_ext_fullpath with the last component only.
        if fullname == SHIM_EXT:
            return os.path.join(*fullname.split(".")) + ".so"
        if fullname == SHIM_EXT.rpartition(".")[2] and any(e.name == SHIM_EXT for e in self.extensions):
            return fullname + ".so"
        return super().get_ext_filename(fullname)

    def run(self) -> None:
        if os.environ.get("TRACKLEAK_SKIP_SHIM") == "1":
            print("trackleak: TRACKLEAK_SKIP_SHIM=1: not building the preload shim", file=sys.stderr)
            self.extensions = [e for e in self.extensions if e.name != SHIM_EXT]
        if self.inplace and any(e.name == SHIM_EXT for e in self.extensions):
            # Editable install: setuptools copies the built file to agent/_preload/ but does not
            # create a folder that holds no Python package.
            (ROOT / "agent" / "_preload").mkdir(exist_ok=True)
        super().run()

    def build_extension(self, ext: Extension) -> None:
        if ext.name != SHIM_EXT:
            super().build_extension(ext)
            return
        sources = [str(ROOT / s) for s in shim_sources()]
        if not sources:
            raise ShimBuildError(
                "no C sources in preload/src/ (the shim is not written yet?). "
                "Set TRACKLEAK_SKIP_SHIM=1 to install the Python package alone."
            )
        cc = shlex.split(os.environ.get("CC") or "cc")
        if not shutil.which(cc[0]):
            raise ShimBuildError(
                f"C compiler {cc[0]!r} not found. Install one (Debian/Ubuntu: apt-get install gcc, "
                "or run scripts/setup.sh) and run pip install again."
            )
        gen_dir = Path(self.build_temp).resolve() / "trackleak-shim"
        gen_dir.mkdir(parents=True, exist_ok=True)
        self._generate_offsets_header(gen_dir)

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            *cc,
            *CFLAGS,
            f"-I{ROOT / 'preload' / 'include'}",
            f"-I{gen_dir}",
            *sources,
            "-o",
            str(target),
            *LDLIBS,
        ]
        print("trackleak: " + shlex.join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, cwd=ROOT, check=False)
        if proc.returncode != 0:
            raise ShimBuildError(
                f"{cc[0]} failed with exit status {proc.returncode} (see its messages above)"
            )

    def _generate_offsets_header(self, outdir: Path) -> None:
        script = ROOT / "preload" / "gen_pyoffsets_h.py"
        table = ROOT / "bpf" / "offsets" / "cpython.json"
        if not script.exists():
            # The generator is written by another part of the project; until it exists the shim
            # sources must not include the generated header.
            print(f"trackleak: {_rel(script)} missing: no trackleak_pyoffsets.h generated", file=sys.stderr)
            return
        if not table.exists():
            raise ShimBuildError(f"{_rel(table)} is missing (the per-CPython offsets table)")
        out = outdir / "trackleak_pyoffsets.h"
        # gen_pyoffsets_h.py OUT.h [--json TABLE]; it rewrites OUT only when the text changes.
        proc = subprocess.run(
            [sys.executable, str(script), str(out), "--json", str(table)], cwd=ROOT, check=False
        )
        if proc.returncode != 0:
            raise ShimBuildError(f"{_rel(script)} failed with exit status {proc.returncode}")


def packages() -> tuple[list[str], dict[str, list[str]]]:
    """Import packages and their data, from the three source folders mapped in pyproject.toml."""
    pkgs = ["trackleak"] + [f"trackleak.{p}" for p in find_packages("agent")]
    if (ROOT / "cli").is_dir():
        pkgs += ["trackleak.cli"] + [f"trackleak.cli.{p}" for p in find_packages("cli")]
    data: dict[str, list[str]] = {"trackleak": ["py.typed"]}
    if (ROOT / "bpf").is_dir():
        # bpf/ holds C and JSON for the agent to read through importlib.resources, little Python.
        pkgs += ["trackleak.bpf"] + [f"trackleak.bpf.{p}" for p in find_packages("bpf")]
        data["trackleak.bpf"] = ["*.bpf.c", "*.h", "offsets/*.json"]
    return sorted(set(pkgs)), data


def _bdist_wheel_cls():
    """A wheel tagged py3-none-<platform>: the shim is native but independent of the Python ABI."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel as base
    except ImportError:  # setuptools < 70.1
        try:
            from wheel.bdist_wheel import bdist_wheel as base
        except ImportError:
            return None

    class bdist_wheel(base):
        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    return bdist_wheel


_pkgs, _data = packages()
_cmdclass = {"build_ext": build_shim}
if (_bw := _bdist_wheel_cls()) is not None:
    _cmdclass["bdist_wheel"] = _bw

setup(
    packages=_pkgs,
    package_data=_data,
    include_package_data=False,
    # Declared so that the distribution is not pure and build_ext places the file (see above).
    ext_modules=[Extension(SHIM_EXT, sources=shim_sources())],
    cmdclass=_cmdclass,
)
