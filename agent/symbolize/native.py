"""Better names for the shim's native rows.

Inside the target the shim names a native site with dladdr, which sees exported symbols only;
anything else arrives as ``[object+0xOFFSET]`` (offset from the object's load base), with the
object's path as ``file``. Outside the target we can afford the ELF symbol table (.symtab), which
also names static functions: ``[libpython3.12.so.1.0+0x1cfe60]`` becomes ``list_resize``.

The path comes from a process or file we do not trust: only regular files outside /proc, /sys and
/dev, of a sane size and starting with the ELF magic, are opened; anything else keeps its name.
"""

from __future__ import annotations

import os
import re
import stat

from .elf import elf_info

_UNNAMED = re.compile(r"^\[(?P<obj>[^\[\]+]+)\+0x(?P<off>[0-9a-f]{1,16})\]$")
_MAX_ELF = 2 << 30
_REFUSED = ("/proc/", "/sys/", "/dev/")


def _elf_file_ok(path: str) -> bool:
    if not os.path.isabs(path) or path.startswith(_REFUSED):
        return False
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or not 64 <= st.st_size <= _MAX_ELF:
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def native_name(function: str, file: str) -> str:
    """The function containing a shim-style ``[object+0xOFF]`` address, or ``function`` as is."""
    m = _UNNAMED.match(function)
    if not m or not _elf_file_ok(file):
        return function
    try:
        info = elf_info(file)
        if not info.loads:
            return function
        # dladdr's offset is from the load base, where the lowest PT_LOAD (page-aligned) sits.
        base_vaddr = min(vaddr for _, vaddr, _, _ in info.loads) & ~0xFFF
        return info.function_at(base_vaddr + int(m["off"], 16)) or function
    except Exception:  # a malformed ELF file is not our problem to report: keep the raw name
        return function
