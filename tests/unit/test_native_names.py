"""Native rows from the shim, `[object+0xOFF]`, named from the ELF symbol table outside the target;
paths from untrusted data that are not plain ELF files keep the raw name."""

from __future__ import annotations

import glob
import os

import pytest

from trackleak.symbolize.elf import elf_info
from trackleak.symbolize.native import native_name

LIBC = next(iter(sorted(glob.glob("/lib/*/libc.so.6") + glob.glob("/lib64/libc.so.6"))), None)


@pytest.mark.skipif(LIBC is None, reason="no glibc libc.so.6 on this machine to read symbols from")
def test_offset_inside_a_function_gets_its_name():
    info = elf_info(LIBC)
    vaddr, size = info.symbol("malloc")
    base = min(v for _, v, _, _ in info.loads) & ~0xFFF
    raw = f"[libc.so.6+0x{vaddr - base + min(size, 8) - 1:x}]"
    assert native_name(raw, LIBC) == "malloc"


def test_untrusted_paths_keep_the_raw_name(tmp_path):
    raw = "[x.so+0x10]"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would hang: must not be touched
    not_elf = tmp_path / "not_elf.so"
    not_elf.write_bytes(b"hello" * 100)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF" + b"\xff" * 200)
    for path in (
        str(fifo),
        str(not_elf),
        str(broken),
        "/proc/self/mem",
        "/dev/zero",
        "relative.so",
        str(tmp_path / "missing.so"),
    ):
        assert native_name(raw, path) == raw, path


def test_names_that_are_not_offsets_are_left_alone():
    assert native_name("leaky_function", "/bin/sh") == "leaky_function"
    assert native_name("[a+b+0x10]", "/bin/sh") == "[a+b+0x10]"
