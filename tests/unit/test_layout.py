# SPDX-License-Identifier: MIT
"""The ctypes mirror (trackleak.layout) against the C header, field by field.

GIVEN a probe compiled against preload/include/trackleak_shm.h that prints sizeof, offsetof and
every constant, WHEN it runs, THEN each number equals the mirror's.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from trackleak import layout as L

HEADER = "preload/include/trackleak_shm.h"

CONSTANTS = {
    "TL_SHM_VERSION": L.TL_SHM_VERSION,
    "TL_FUNC_MAX": L.TL_FUNC_MAX,
    "TL_FILE_MAX": L.TL_FILE_MAX,
    "TL_FLAG_PYTHON": L.TL_FLAG_PYTHON,
    "TL_FLAG_PYMEM_HOOKED": L.TL_FLAG_PYMEM_HOOKED,
    "TL_FLAG_ACTIVE": L.TL_FLAG_ACTIVE,
    "TL_FLAG_PY_UNSUPPORTED": L.TL_FLAG_PY_UNSUPPORTED,
    "TL_FLAG_FORKED": L.TL_FLAG_FORKED,
    "TL_FLAG_FROZEN": L.TL_FLAG_FROZEN,
    "TL_FLAG_OBJECTS": L.TL_FLAG_OBJECTS,
    "TL_FLAG_SMALL_BLOCKS": L.TL_FLAG_SMALL_BLOCKS,
    "TL_SITE_F_FREELIST": L.TL_SITE_F_FREELIST,
    "TL_SITE_EMPTY": L.TL_SITE_EMPTY,
    "TL_SITE_RESERVED": L.TL_SITE_RESERVED,
    "TL_SITE_READY": L.TL_SITE_READY,
    "TL_KIND_PYTHON": L.TL_KIND_PYTHON,
    "TL_KIND_NATIVE": L.TL_KIND_NATIVE,
    "TL_COUNT_ONE": L.TL_COUNT_ONE,
    "TL_SITE_RETIRED": L.TL_SITE_RETIRED,
    "TL_SITE_FREE": L.TL_SITE_FREE,
    "TL_KIND_OTHER": L.TL_KIND_OTHER,
    "TL_STACK_DEPTH_MAX": L.TL_STACK_DEPTH_MAX,
    "TL_STACK_F_TRUNCATED": L.TL_STACK_F_TRUNCATED,
}


def test_count_weights_have_one_fixed_point():
    from trackleak import sampling

    assert L.TL_COUNT_ONE == sampling.COUNT_ONE


def _probe_source() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <string.h>",
        '#include "trackleak_shm.h"',
        '#define F(s, f) printf("field %s %s %zu %zu\\n", #s, #f, offsetof(struct s, f), \\',
        "                        sizeof(((struct s *)0)->f))",
        "int main(void) {",
        '    printf("magic %zu ", sizeof(TL_SHM_MAGIC) - 1);',
        "    for (size_t i = 0; i < sizeof(TL_SHM_MAGIC) - 1; i++)",
        '        printf("%02x", (unsigned char)TL_SHM_MAGIC[i]);',
        '    printf("\\n");',
        '    printf("memfd %s\\n", TL_SHM_MEMFD_NAME);',
    ]
    for name in CONSTANTS:
        lines.append(f'    printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines.append('    printf("const TL_STACK_FRAMES_AT %zu\\n", offsetof(struct tl_stack, frames));')
    for cname, cls in L.STRUCTS.items():
        lines.append(f'    printf("sizeof {cname} %zu\\n", sizeof(struct {cname}));')
        for field, *_ in cls._fields_:
            lines.append(f"    F({cname}, {field});")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(tmp_path_factory, request) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc/clang) to compile the layout probe")
    repo = request.config.rootpath
    tmp = tmp_path_factory.mktemp("layout")
    src = tmp / "probe.c"
    src.write_text(_probe_source())
    exe = tmp / "probe"
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", f"-I{repo / 'preload' / 'include'}", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    data: dict = {"fields": {}, "sizeof": {}, "const": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "field":
            s, f, off, size = rest
            data["fields"][(s, f)] = (int(off), int(size))
        elif kind == "sizeof":
            data["sizeof"][rest[0]] = int(rest[1])
        elif kind == "const":
            data["const"][rest[0]] = int(rest[1])
        elif kind == "magic":
            data["magic"] = bytes.fromhex(rest[1]) if len(rest) > 1 else b""
        elif kind == "memfd":
            data["memfd"] = rest[0]
    return data


@pytest.mark.parametrize("cname", sorted(L.STRUCTS))
def test_struct_size_matches_header(probe, cname):
    assert ctypes.sizeof(L.STRUCTS[cname]) == probe["sizeof"][cname]


def test_every_c_field_is_mirrored_at_the_same_offset_and_size(probe):
    for cname, cls in L.STRUCTS.items():
        for field, *_ in cls._fields_:
            descr = getattr(cls, field)
            assert (descr.offset, descr.size) == probe["fields"][(cname, field)], f"{cname}.{field}"


def test_mirror_has_no_field_the_header_lacks_and_no_gap(probe):
    # The probe only knows the fields we ask for; a field the header has and we lack would show as
    # a size mismatch or as a hole between consecutive offsets. Check there is no hole.
    for cname, cls in L.STRUCTS.items():
        end = 0
        for field, *_ in cls._fields_:
            off, size = probe["fields"][(cname, field)]
            assert off == end, f"{cname}: gap or unknown field before {field} (offset {off}, expected {end})"
            end = off + size
        assert end == probe["sizeof"][cname], f"{cname}: unknown trailing field(s)"


def test_constants_match(probe):
    assert {k: v for k, v in probe["const"].items() if k in CONSTANTS} == CONSTANTS
    assert probe["magic"] == L.TL_SHM_MAGIC  # the 8 bytes the shim copies (its own NUL included)
    assert probe["memfd"] == L.TL_SHM_MEMFD_NAME


def test_header_sizes_exported():
    assert ctypes.sizeof(L.TlShmHeader) == L.HEADER_SIZE
    assert ctypes.sizeof(L.TlSite) == L.SITE_SIZE


def test_stack_record_frames_follow_the_fixed_part(probe):
    # struct tl_stack ends with a flexible array of frame numbers: it starts where the mirror ends
    assert probe["const"]["TL_STACK_FRAMES_AT"] == L.STACK_FIXED_SIZE
    assert L.stack_record_size(0) == L.STACK_FIXED_SIZE
    assert L.stack_record_size(32) == L.STACK_FIXED_SIZE + 128
    assert L.stack_record_size(1) % 8 == 0


def test_py_version_and_flag_names():
    assert L.py_version_str(0x030B07F0) == "3.11.7"
    assert L.py_version_str(0x030D00C1) == "3.13.0rc1"
    assert L.py_version_str(0) is None
    assert L.flag_names(L.TL_FLAG_PYTHON | L.TL_FLAG_ACTIVE | 0x100) == ["python", "active", "0x100"]
