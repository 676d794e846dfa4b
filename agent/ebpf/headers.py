"""Kernel headers for bcc: found, not assumed (ARCHITECTURE decision 7).

Order:
  1. ``BCC_KERNEL_SOURCE`` already set by the user: used as is.
  2. The running kernel's own headers (``/lib/modules/$(uname -r)/build``): bcc finds them itself.
  3. A merged tree of a distribution's generic headers (Debian splits them into
     ``linux-headers-X-common`` and ``linux-headers-X-<arch>``; bcc wants one tree), passed to bcc
     through ``BCC_KERNEL_SOURCE``: the path recorded by ``scripts/setup.sh`` in
     ``.cache/bcc_kernel_source`` of a checkout, else a tree we merge into a cache directory.

The BPF program reads no kernel struct through these headers (only ``pt_regs`` and helper
declarations, which are stable), so generic headers of another kernel version are fine; the one
kernel struct offset we need comes from BTF (see ``btf.py``). Nothing is written to system paths.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KernelHeaders:
    path: str | None  # None: bcc's own lookup (the running kernel's headers)
    how: str  # one phrase for `doctor` and error messages

    def environ(self) -> dict[str, str]:
        return {"BCC_KERNEL_SOURCE": self.path} if self.path else {}


def _has_tree(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "include")) and os.path.isdir(os.path.join(path, "arch"))


def running_kernel_headers() -> str | None:
    release = os.uname().release
    for sub in ("build", "source"):
        path = f"/lib/modules/{release}/{sub}"
        if _has_tree(path):
            return path
    return None


def _cache_dir() -> Path:
    if (REPO_ROOT / ".git").exists() or (REPO_ROOT / "bpf").is_dir():
        return REPO_ROOT / ".cache"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "trackleak"


def recorded_tree() -> str | None:
    """The tree scripts/setup.sh merged (its path is in .cache/bcc_kernel_source of a checkout)."""
    marker = REPO_ROOT / ".cache" / "bcc_kernel_source"
    try:
        path = marker.read_text().strip()
    except OSError:
        return None
    return path if path and _has_tree(path) else None


def generic_header_pairs(usr_src: str = "/usr/src") -> list[tuple[str, str]]:
    """(common, arch) directory pairs of installed generic headers, newest first."""
    pairs = []
    for common in glob.glob(os.path.join(usr_src, "linux-headers-*-common")):
        stem = common[: -len("-common")]
        for arch in sorted(glob.glob(stem + "-*")):
            if arch != common and os.path.isdir(os.path.join(arch, "include")):
                pairs.append((common, arch))
                break

    def version(pair: tuple[str, str]) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", os.path.basename(pair[0])))

    return sorted(pairs, key=version, reverse=True)


def merge_tree(common: str, arch: str, dest: Path) -> str:
    """Copy common then arch-specific headers into one tree (idempotent; atomic rename)."""
    if _has_tree(str(dest)) and (dest / ".trackleak-merged").exists():
        return str(dest)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(common, tmp, symlinks=True)
    shutil.copytree(arch, tmp, symlinks=True, dirs_exist_ok=True)
    (tmp / ".trackleak-merged").write_text(f"{common}\n{arch}\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return str(dest)


def find_kernel_headers(build: bool = True) -> KernelHeaders | None:
    """Where bcc gets kernel headers; None when there are none (and ``build`` is off or impossible)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return KernelHeaders(env, f"BCC_KERNEL_SOURCE={env} (set by the user)")
    own = running_kernel_headers()
    if own:
        return KernelHeaders(None, f"the running kernel's headers ({own})")
    recorded = recorded_tree()
    if recorded:
        return KernelHeaders(recorded, f"merged generic headers {recorded} (from scripts/setup.sh)")
    pairs = generic_header_pairs()
    if not pairs:
        return None
    common, arch = pairs[0]
    dest = _cache_dir() / "kernel-headers" / os.path.basename(arch)
    if not build and not (dest / ".trackleak-merged").exists():
        return KernelHeaders(
            str(dest), f"generic headers {os.path.basename(arch)} (to be merged into {dest})"
        )
    try:
        path = merge_tree(common, arch, dest)
    except OSError:
        return None
    return KernelHeaders(path, f"merged generic headers {path} (from {os.path.basename(arch)})")


def apply(headers: KernelHeaders) -> None:
    """Export BCC_KERNEL_SOURCE for bcc when we chose a tree (no-op for the kernel's own)."""
    os.environ.update(headers.environ())
