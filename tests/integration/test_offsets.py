# SPDX-License-Identifier: MIT
"""bpf/offsets/cpython.json against every local CPython.

Three independent checks of the one offsets table:
- `generate.py --check`: the committed JSON equals what each interpreter's own
  headers say (compiler's offsetof).
- a live walk: each interpreter, using only the table and raw memory reads,
  finds its thread state through the gilstate TSS key, walks its frames and
  reads code objects, str and bytes -- the way the shim and the BPF program will.
- for 3.13+: the interpreter's own `_Py_DebugOffsets` (first field of `_PyRuntime`).
Plus: the C header made by preload/gen_pyoffsets_h.py compiles and holds the same numbers.
"""

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # needs real interpreters (and cc for some tests)

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "bpf" / "offsets" / "generate.py"
GEN_HEADER = ROOT / "preload" / "gen_pyoffsets_h.py"
TABLE_PATH = ROOT / "bpf" / "offsets" / "cpython.json"


def _load_generate():
    spec = importlib.util.spec_from_file_location("tl_offsets_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generate()
TABLE = json.loads(TABLE_PATH.read_text())
INTERPRETERS = gen.default_interpreters()  # same discovery as the generator

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None, reason="cc not found: the offsets probe and header test compile C"
)


def _params(infos, missing_reason):
    """One param per interpreter (id = its version), or one skipped param saying what's missing."""
    if not infos:
        return [pytest.param(None, marks=pytest.mark.skip(reason=missing_reason), id="none")]
    return [pytest.param(i, id=i["version"] + ("t" if i["gil_disabled"] else "")) for i in infos]


ALL = _params(INTERPRETERS, "no CPython >= 3.9 found (pyenv versions or /usr/bin/python3.11)")
WITH_DEBUG_OFFSETS = _params(
    [i for i in INTERPRETERS if tuple(i["version_info"]) >= (3, 13)],
    "no CPython >= 3.13 found (they carry _Py_DebugOffsets)",
)


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- --check


@needs_cc
@pytest.mark.parametrize("info", ALL)
def test_committed_table_matches_interpreter_headers(info):
    # GIVEN one local interpreter WHEN the generator re-probes its headers
    r = run([sys.executable, GENERATE, "--check", info["python"]])
    # THEN the committed table agrees
    assert r.returncode == 0, r.stderr


@needs_cc
def test_check_prints_a_diff_naming_the_field(tmp_path):
    # GIVEN a committed table with one wrong number
    info = INTERPRETERS[0] if INTERPRETERS else pytest.skip("no CPython >= 3.9 found")
    bad = json.loads(TABLE_PATH.read_text())
    bad[info["minor"]]["code.co_name"] += 8
    path = tmp_path / "cpython.json"
    path.write_text(json.dumps(bad))
    # WHEN checked
    r = run([sys.executable, GENERATE, "--check", "--json", path, info["python"]])
    # THEN it fails and says which minor and field
    assert r.returncode == 1
    assert "{}: code.co_name: committed".format(info["minor"]) in r.stderr


def test_same_minor_disagreeing_fails_loudly(monkeypatch):
    # GIVEN two interpreters of one minor whose headers give different offsets
    a = {"python": "/a/python", "version": "3.11.2", "minor": "3.11"}
    b = {"python": "/b/python", "version": "3.11.7", "minor": "3.11"}
    values = {
        "/a/python": dict.fromkeys(gen.FIELDS, 8),
        "/b/python": dict(dict.fromkeys(gen.FIELDS, 8), **{"frame.owner": 70}),
    }
    monkeypatch.setattr(gen, "probe", lambda info: values[info["python"]])
    # WHEN generating THEN it stops and names the field and both versions
    with pytest.raises(
        gen.OffsetsError, match=r"(?s)NOT enough.*frame\.owner: 3\.11\.2 says 8, 3\.11\.7 says 70"
    ):
        gen.generate([a, b])


def test_table_shape():
    # Every minor has exactly the generator's fields, in order, so the C header is regular.
    minors = [k for k in TABLE if not k.startswith("_")]
    assert minors and set(minors) == set(TABLE["_generated_from"])
    for m in minors:
        assert list(TABLE[m]) == gen.FIELDS, m


# --------------------------------------------------------------------------- live walk

# Runs inside the target interpreter with its table as argv[1]. Only raw reads
# at table offsets, then compares with what Python itself reports.
LIVE_WALK = r"""
import ctypes, dis, json, sys, threading
T = json.loads(sys.argv[1])
api = ctypes.pythonapi          # dlopen(NULL): finds _PyRuntime in libpython or a static binary
api.PyThreadState_Get.restype = ctypes.c_void_p
api.PyInterpreterState_Get.restype = ctypes.c_void_p
libc = ctypes.CDLL(None)
libc.pthread_getspecific.restype = ctypes.c_void_p
libc.pthread_getspecific.argtypes = [ctypes.c_uint]
RUNTIME = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))

def ptr(a): return ctypes.c_void_p.from_address(a).value or 0
def i8(a): return ctypes.c_int8.from_address(a).value
def i32(a): return ctypes.c_int32.from_address(a).value
def u32(a): return ctypes.c_uint32.from_address(a).value
def ssize(a): return ctypes.c_ssize_t.from_address(a).value
def ulong(a): return ctypes.c_ulong.from_address(a).value

def check(what, got, want):
    if got != want:
        raise AssertionError("%s: read %r, expected %r" % (what, got, want))

def line_of(code, offset):
    if hasattr(code, "co_lines"):                       # 3.10+
        for start, end, line in code.co_lines():
            if start <= offset < end:
                return line
        return None
    line = None                                         # 3.9: lnotab line starts
    for start, l in dis.findlinestarts(code):
        if start <= offset:
            line = l
    return line

def walk(tstate):
    # Raw reads here are ctypes C calls inline, not ptr()/i8(): a Python helper
    # would itself be the innermost frame while it reads the frame pointer.
    P, I8, I32 = ctypes.c_void_p.from_address, ctypes.c_int8.from_address, ctypes.c_int32.from_address
    # innermost frame: tstate->frame / tstate->cframe->current_frame / tstate->current_frame
    if T["tstate.frame"] >= 0:
        f = P(tstate + T["tstate.frame"]).value
    elif T["tstate.cframe"] >= 0:
        f = P(P(tstate + T["tstate.cframe"]).value + T["cframe.current_frame"]).value
    else:
        f = P(tstate + T["tstate.current_frame"]).value
    got = []
    while f:
        # 3.12+: entry frames owned by the C stack are not Python frames
        if T["frame.owner_cstack"] < 0 or I8(f + T["frame.owner"]).value < T["frame.owner_cstack"]:
            code = P(f + T["frame.code"]).value & ~T["frame.code_tag_bits"]   # 3.14+: _PyStackRef
            if T["frame.lasti"] >= 0:
                off = I32(f + T["frame.lasti"]).value * (2 if T["frame.lasti_is_index"] == 1 else 1)
            else:
                bytecode = code + T["code.co_code_adaptive"]
                if T["frame.tlbc_index"] >= 0 and T["code.co_tlbc"] >= 0:
                    # 3.14t: a thread runs its own copy, entries[tlbc_index] of co_tlbc
                    # (a _PyCodeArray: Py_ssize_t size, char *entries[])
                    index, array = I32(f + T["frame.tlbc_index"]).value, P(code + T["code.co_tlbc"]).value
                    if array and 0 < index < ssize(array):
                        bytecode = P(array + 8 + 8 * index).value
                off = P(f + T["frame.instr"]).value - bytecode
            owner = I8(f + T["frame.owner"]).value if T["frame.owner"] >= 0 else None
            got.append((code, off, owner))
        f = P(f + T["frame.previous"]).value
    want, pyf = [], sys._getframe()
    while pyf:
        want.append(pyf)
        pyf = pyf.f_back
    check("frame chain (code ids)", [g[0] for g in got], [id(w.f_code) for w in want])
    # Callers are parked on their call instruction, so its line is f_lineno.
    # (The innermost frame is this function, still running: skip it.)
    check("caller lines", [line_of(w.f_code, g[1]) for g, w in zip(got[1:], want[1:])],
          [w.f_lineno for w in want[1:]])
    if T["frame.owner"] >= 0:   # running frames: FRAME_OWNED_BY_GENERATOR (1) or _THREAD (0)
        check("frame owners", [g[2] for g in got],
              [1 if w.f_code.co_flags & 0x20 else 0 for w in want])   # 0x20: CO_GENERATOR

def check_thread(errors):
    try:
        tstate, interp = api.PyThreadState_Get(), api.PyInterpreterState_Get()
        # The shim's route: gilstate TSS key in _PyRuntime -> pthread_getspecific
        # (3.15+: no key, a C11 thread-local read by PyGILState_GetThisThreadState).
        if T["runtime.autotsskey"] >= 0:
            tss = RUNTIME + T["runtime.autotsskey"]
            check("Py_tss_t._is_initialized", i32(tss), 1)   # first member of Py_tss_t
            check("tstate via autoTSSkey", libc.pthread_getspecific(u32(tss + T["tss.key"])), tstate)
        api.PyGILState_GetThisThreadState.restype = ctypes.c_void_p
        check("tstate via PyGILState_GetThisThreadState", api.PyGILState_GetThisThreadState(), tstate)
        # (interpreters.main follows head and is equal here: --check is what pins head.)
        check("runtime.interpreters.head", ptr(RUNTIME + T["runtime.interpreters_head"]), interp)
        check("tstate.interp", ptr(tstate + T["tstate.interp"]), interp)
        t, seen = ptr(interp + T["interp.tstate_head"]), []
        while t and len(seen) < 1000:
            seen.append(t)
            t = ptr(t + T["tstate.next"])
        check("tstate on interp's thread list", tstate in seen, True)
        check("length of interp's thread list", len(seen), threading.active_count())
        check("tstate.thread_id", ulong(tstate + T["tstate.thread_id"]), threading.get_ident())
        if T["tstate.native_thread_id"] >= 0:
            check("tstate.native_thread_id", ulong(tstate + T["tstate.native_thread_id"]),
                  threading.get_native_id())
        def in_generator():   # a generator frame in the chain exercises frame.owner
            walk(tstate)
            yield
        next(in_generator())
    except Exception as e:
        errors.append("%s: %s" % (threading.current_thread().name, e))

def check_objects():
    def sample():
        pass
    co = sample.__code__
    a = id(co)
    check("ob_type", ptr(a + T["object.ob_type"]), id(type(co)))
    check("tp_name", ctypes.string_at(ptr(id(type(co)) + T["type.tp_name"])), b"code")
    check("co_name", ptr(a + T["code.co_name"]), id(co.co_name))
    check("co_filename", ptr(a + T["code.co_filename"]), id(co.co_filename))
    check("co_firstlineno", i32(a + T["code.co_firstlineno"]), co.co_firstlineno)
    for field, attr in (("code.co_qualname", "co_qualname"), ("code.co_code", "co_code"),
                        ("code.co_linetable", "co_linetable"), ("code.co_lnotab", "co_lnotab")):
        if T[field] >= 0:
            check(field, ptr(a + T[field]), id(getattr(co, attr)))
    # The bytecode array ends PyCodeObject in 3.11+; the type's basic size stops there.
    check("code basicsize", type(co).__basicsize__,
          T["code.co_code_adaptive"] if T["code.co_code_adaptive"] >= 0 else T["code.sizeof"])

    for s, kind, enc in (("trackleak", 1, "latin-1"), ("tr\xe4ck", 1, "latin-1"),
                         ("tr\u20acck", 2, "utf-16-le"), ("tr\U0001f600ck", 4, "utf-32-le")):
        w = u32(id(s) + T["unicode.state"])
        ascii_ = w >> T["unicode.state_ascii_bit"] & 1
        check("compact bit of %a" % s, w >> T["unicode.state_compact_bit"] & 1, 1)
        check("ascii bit of %a" % s, ascii_, int(s.isascii()))
        kind_mask = (1 << T["unicode.state_kind_bits"]) - 1
        check("kind of %a" % s, w >> T["unicode.state_kind_shift"] & kind_mask, kind)
        check("length of %a" % s, ssize(id(s) + T["unicode.length"]), len(s))
        data = id(s) + (T["unicode.asciiobject_size"] if ascii_ else T["unicode.compact_size"])
        check("data of %a" % s, ctypes.string_at(data, len(s) * kind), s.encode(enc))

    b = b"trackleak-bytes"
    check("bytes ob_size", ssize(id(b) + T["varobject.ob_size"]), len(b))
    check("bytes ob_sval", ctypes.string_at(id(b) + T["bytes.ob_sval"], len(b) + 1), b + b"\0")
    check("bytes basicsize", bytes.__basicsize__, T["bytes.ob_sval"] + 1)

check_objects()
errors = []
check_thread(errors)
worker = threading.Thread(target=check_thread, args=(errors,), name="worker")
worker.start()
worker.join()
if errors:
    sys.exit("\n".join(errors))
print("ok")
"""


@pytest.mark.parametrize("info", ALL)
def test_live_interpreter_readable_with_table(info):
    # GIVEN the committed table for this interpreter's minor
    table = TABLE.get(info["minor"])
    assert table is not None, "{} missing from cpython.json".format(info["minor"])
    # WHEN the interpreter reads its own thread state, frames, code, str and bytes
    # through raw memory at those offsets (main thread and a second thread)
    r = run([info["python"], "-c", LIVE_WALK, json.dumps(table)])
    # THEN everything matches what Python reports
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# --------------------------------------------------------------------------- _Py_DebugOffsets

# our field -> "section.member" in _Py_DebugOffsets: the generator's mapping (one source).
DEBUG_NAMES = {field: member for field, (member, _since) in gen.DEBUG_MEMBERS.items()}
# These must exist in every _Py_DebugOffsets we accept; the rest are compared when present.
DEBUG_REQUIRED = [
    "tstate.current_frame",
    "frame.previous",
    "frame.code",
    "frame.instr",
    "frame.owner",
    "code.co_name",
    "code.co_filename",
    "code.co_qualname",
    "code.co_firstlineno",
    "code.co_code_adaptive",
    "code.co_linetable",
]


def debug_offsets_layout(include):
    """Member names of _Py_DebugOffsets in order, from the interpreter's own header.

    Every member after `char cookie[8]` is a uint64_t, possibly grouped in
    nested structs, so the layout is just the ordered list of "section.member".
    Anything else in the block fails the test rather than being guessed at.
    """
    for name in ("pycore_debug_offsets.h", "pycore_runtime.h"):  # 3.14 moved it
        path = Path(include) / "internal" / name
        if path.exists():
            m = re.search(
                r"typedef struct _Py_DebugOffsets \{(.*?)\n\} _Py_DebugOffsets;", path.read_text(), re.S
            )
            if m:
                break
    else:
        raise AssertionError(f"no _Py_DebugOffsets in {include}/internal")
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", m.group(1), flags=re.S)
    stack = [[]]  # member names of each struct being read, outermost first
    for line in (raw.strip() for raw in body.splitlines()):
        opened = re.fullmatch(r"struct (?:\w+)?\s*\{", line)
        closed = re.fullmatch(r"\} (\w+);", line)
        member = re.fullmatch(r"uint64_t (\w+);", line)
        if not line or re.fullmatch(r"char cookie\[8\][\w ]*;", line):
            continue
        if opened:
            stack.append([])
        elif closed:
            inner = stack.pop()
            stack[-1] += [f"{closed.group(1)}.{n}" for n in inner]
        elif member:
            stack[-1].append(member.group(1))
        else:
            raise AssertionError(f"unexpected line in _Py_DebugOffsets: {line!r}")
    assert len(stack) == 1, "unbalanced braces in _Py_DebugOffsets"
    return stack[0]


READ_DEBUG_OFFSETS = r"""
import ctypes, sys
try:
    lib = ctypes.pythonapi
    addr = ctypes.addressof(ctypes.c_char.in_dll(lib, "_PyRuntime"))
except (AttributeError, ValueError):   # statically linked: the symbol is in the executable
    addr = ctypes.addressof(ctypes.c_char.in_dll(ctypes.CDLL(None), "_PyRuntime"))
print(ctypes.string_at(addr, int(sys.argv[1])).hex())
"""


@pytest.mark.parametrize("info", WITH_DEBUG_OFFSETS)
def test_debug_offsets_agree_with_table(info):
    # GIVEN the _Py_DebugOffsets layout from this interpreter's headers (parsed from the text,
    # independently of the generator's offsetof)
    names = debug_offsets_layout(info["include"])
    # WHEN the running interpreter's copy (start of _PyRuntime) is read
    r = run([info["python"], "-c", READ_DEBUG_OFFSETS, str(8 + 8 * len(names))])
    assert r.returncode == 0, r.stderr
    raw = bytes.fromhex(r.stdout.strip())
    assert raw[:8] == b"xdebugpy", raw[:8]
    debug = dict(zip(names, struct.unpack(f"={len(names)}Q", raw[8:])))
    assert debug["version"] >> 16 == (info["version_info"][0] << 8 | info["version_info"][1])
    assert debug["free_threaded"] == int(info["gil_disabled"])
    table = TABLE[info["minor"]]
    missing = [f for f in DEBUG_REQUIRED if DEBUG_NAMES[f] not in debug]
    assert not missing, f"not in _Py_DebugOffsets: {missing}"
    # THEN the table's debug.X positions are where the header puts each member
    assert table["debug.version"] == 8 + 8 * names.index("version")
    assert table["debug.free_threaded"] == 8 + 8 * names.index("free_threaded")
    positions = {f: 8 + 8 * names.index(d) for f, d in DEBUG_NAMES.items() if d in names}
    assert {f: table["debug." + f] for f in positions} == positions
    # AND every field both know has the same value (a field the build lacks, -1 in the table,
    # is 0 there: tlbc without free threading)
    pairs = {f: (table[f], debug[d]) for f, d in DEBUG_NAMES.items() if d in debug and table[f] >= 0}
    assert {f: t for f, (t, _) in pairs.items()} == {f: d for f, (_, d) in pairs.items()}
    # AND what is not described has a place in the table (or is absent from this minor)
    assert all(table["debug." + f] == -1 for f in DEBUG_NAMES if DEBUG_NAMES[f] not in debug)


# --------------------------------------------------------------------------- C header


@needs_cc
def test_generated_header_compiles_and_matches_json(tmp_path):
    # GIVEN the header generated twice from the committed JSON
    h1, h2 = tmp_path / "tl_pyoffsets.h", tmp_path / "again.h"
    for h in (h1, h2):
        r = run([sys.executable, GEN_HEADER, h])
        assert r.returncode == 0, r.stderr
    assert h1.read_bytes() == h2.read_bytes(), "generator output is not deterministic"
    # WHEN a C program including it (strict C99) prints every field of every entry
    minors = [k for k in TABLE if not k.startswith("_")]
    fields = list(TABLE[minors[0]])
    prints = "\n".join(
        '        printf("%d.%d%s {} %d\\n", o->major, o->minor, o->free_threaded ? "t" : "", o->{});'.format(
            f, f.replace(".", "_")
        )
        for f in fields
    )
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\n#include "tl_pyoffsets.h"\n'
        "int main(void)\n{\n"
        "    if (tl_pyoffsets_find(3, 99, 0) != 0) return 2;\n"
        "    for (int i = 0; i < TL_PYOFFSETS_COUNT; i++) {\n"
        "        const struct tl_pyoffsets *o = &tl_pyoffsets_table[i];\n"
        "        if (tl_pyoffsets_find(o->major, o->minor, o->free_threaded) != o) return 3;\n"
        + prints
        + "\n    }\n    return 0;\n}\n"
    )
    exe = tmp_path / "main"
    r = run(
        [
            "cc",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-I",
            tmp_path,
            tmp_path / "main.c",
            "-o",
            exe,
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([exe])
    assert r.returncode == 0, r.returncode
    # THEN it prints exactly the JSON's numbers
    want = [f"{m} {f} {TABLE[m][f]}" for m in minors for f in fields]
    assert r.stdout.splitlines() == want
