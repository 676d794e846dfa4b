#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Generate bpf/offsets/cpython.json: per-CPython-minor struct offsets.

The shim (reading its own frames without the GIL) and the BPF program (reading
a target's frames from the kernel) both need a handful of CPython struct
offsets. Nobody types them in: for each interpreter this script compiles a tiny
C probe against *that interpreter's own headers* (with -DPy_BUILD_CORE so the
internal ones are usable) and records offsetof()/sizeof() as the compiler sees
them. No libpython is linked; the probe only prints numbers.

The table is keyed by "major.minor". If two interpreters of one minor disagree
(e.g. pyenv 3.11.7 vs Debian 3.11.2) we stop loudly: that would mean a
per-minor table is not enough.

    generate.py                 print the JSON for the local interpreters
    generate.py --write         merge it into bpf/offsets/cpython.json
    generate.py --check [PY..]  exit 1 with a diff if the committed JSON disagrees

Stdlib only; runs on Python 3.9+. Target interpreters may be any CPython >= 3.9.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "cpython.json")
MIN_VERSION = (3, 9)

# Table field -> the _Py_DebugOffsets member that describes it (3.13+), with the first minor that
# has the member. Members that a build without the GIL leaves at 0 (tlbc) are marked "t".
DEBUG_MEMBERS = {
    "tstate.current_frame": ("thread_state.current_frame", 0x030D0000),
    "tstate.interp": ("thread_state.interp", 0x030D0000),
    "tstate.thread_id": ("thread_state.thread_id", 0x030D0000),
    "tstate.native_thread_id": ("thread_state.native_thread_id", 0x030D0000),
    "tstate.next": ("thread_state.next", 0x030D0000),
    "frame.previous": ("interpreter_frame.previous", 0x030D0000),
    "frame.code": ("interpreter_frame.executable", 0x030D0000),
    "frame.instr": ("interpreter_frame.instr_ptr", 0x030D0000),
    "frame.owner": ("interpreter_frame.owner", 0x030D0000),
    "frame.tlbc_index": ("interpreter_frame.tlbc_index", 0x030E0000),
    "code.co_name": ("code_object.name", 0x030D0000),
    "code.co_filename": ("code_object.filename", 0x030D0000),
    "code.co_qualname": ("code_object.qualname", 0x030D0000),
    "code.co_firstlineno": ("code_object.firstlineno", 0x030D0000),
    "code.co_code_adaptive": ("code_object.co_code_adaptive", 0x030D0000),
    "code.co_linetable": ("code_object.linetable", 0x030D0000),
    "code.sizeof": ("code_object.size", 0x030D0000),
    "code.co_tlbc": ("code_object.co_tlbc", 0x030E0000),
    "unicode.asciiobject_size": ("unicode_object.asciiobject_size", 0x030D0000),
    "unicode.compact_size": ("unicode_object.compactunicodeobject_size", 0x030F0000),
    "unicode.length": ("unicode_object.length", 0x030D0000),
    "unicode.state": ("unicode_object.state", 0x030D0000),
    "bytes.ob_sval": ("bytes_object.ob_sval", 0x030D0000),
    "varobject.ob_size": ("bytes_object.ob_size", 0x030D0000),
    "object.ob_type": ("pyobject.ob_type", 0x030D0000),
    "type.tp_name": ("type_object.tp_name", 0x030D0000),
    "runtime.interpreters_head": ("runtime_state.interpreters_head", 0x030D0000),
    "interp.tstate_head": ("interpreter_state.threads_head", 0x030D0000),
}
DEBUG_FIELDS = list(DEBUG_MEMBERS)

# Field order here is the order in the JSON and in the generated C header.
# -1 means "no such field in this version".
FIELDS = (
    [
        # Finding the innermost frame from a PyThreadState.
        "tstate.frame",  # 3.9/3.10: PyFrameObject *frame
        "tstate.cframe",  # 3.11/3.12: _PyCFrame *cframe (3.10 has one too, but no frame in it)
        "cframe.current_frame",  # 3.11/3.12
        "tstate.current_frame",  # 3.13+
        "tstate.interp",
        "tstate.thread_id",
        "tstate.native_thread_id",  # 3.11+
        "tstate.next",
        # Walking frames.
        "frame.previous",  # f_back (3.9/3.10) or _PyInterpreterFrame.previous
        "frame.code",  # f_code; f_executable in 3.13
        "frame.lasti",  # 3.9/3.10 PyFrameObject.f_lasti
        "frame.instr",  # prev_instr (3.11/3.12), instr_ptr (3.13+)
        "frame.owner",  # 3.11+
        "frame.owner_cstack",  # 3.12+: frames with owner >= this have no code (C stack / interpreter)
        "frame.lasti_is_index",  # 3.9: f_lasti in bytes (0); 3.10: in code units (1); 3.11+: -1
        "frame.tlbc_index",  # 3.14t: index of the thread-local bytecode copy instr points into
        "frame.code_tag_bits",  # bits to clear from frame.code: 3.14+ f_executable is a _PyStackRef
        # Code objects (symbolization).
        "code.co_name",
        "code.co_filename",
        "code.co_qualname",  # 3.11+
        "code.co_firstlineno",
        "code.co_code_adaptive",  # 3.11+: bytecode inline in the code object
        "code.co_code",  # 3.9/3.10: bytes object holding the bytecode
        "code.co_linetable",  # 3.10+
        "code.co_lnotab",  # 3.9 only
        "code.sizeof",
        "code.co_tlbc",  # 3.14t: _PyCodeArray *co_tlbc (entries[0] is co_code_adaptive)
        # Strings (names and file names are str objects).
        "unicode.asciiobject_size",
        "unicode.compact_size",
        "unicode.length",
        "unicode.state",
        "unicode.state_compact_bit",
        "unicode.state_ascii_bit",
        "unicode.state_kind_shift",
        "unicode.state_kind_bits",
        "bytes.ob_sval",
        "varobject.ob_size",
        "object.ob_type",
        "type.tp_name",
        # From the process to its threads without the GIL (gilstate TSS key).
        "runtime.autotsskey",  # _PyRuntime.gilstate.autoTSSkey (<=3.11), _PyRuntime.autoTSSkey (3.12+)
        "tss.key",  # Py_tss_t._key (the pthread_key_t)
        "runtime.interpreters_head",
        "interp.tstate_head",  # tstate_head (<=3.10), threads.head (3.11+)
        # Build.
        "free_threaded",  # 1 for a --disable-gil build (key "3.13t"), else 0
        # 3.13+: where the interpreter's own _Py_DebugOffsets (at the start of _PyRuntime, cookie
        # "xdebugpy") holds each field above that it describes: byte offset of that uint64 inside the
        # struct, -1 = not described (then the value above is the one used). The struct's layout
        # changes between minors (fields are inserted), so its positions are per minor like the rest;
        # the values read there are the running build's own (a free-threaded build's too).
    ]
    + ["debug." + name for name in DEBUG_FIELDS]
    + ["debug.version", "debug.free_threaded"]
    # pymalloc (not in any header before 3.12, so asked of the running interpreter, see
    # arena_size()): bytes per arena, 256 KiB (3.9) or 1 MiB (3.10+, radix tree); the eBPF agent
    # watches arena mmap/munmap of exactly this size (issue 10). -1: no pymalloc (free-threaded).
    + ["obmalloc.arena_size"]
)

# sys._debugmallocstats() ends its arena part with "N arenas * SIZE bytes/arena = TOTAL".
ARENA_SCRIPT = r"""
import sys
sys._debugmallocstats()
"""

# The probe. Version branches use PY_VERSION_HEX from the headers being probed,
# so one source serves every minor. Enum constants (FRAME_OWNED_BY_CSTACK) can't
# be tested with #ifdef, hence version checks there too.
PROBE_C = r"""
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#if PY_VERSION_HEX < 0x030B0000
#  include <frameobject.h>      /* PyFrameObject was public before 3.11 */
#endif
#include "pycore_runtime.h"     /* _PyRuntimeState */
#include "pycore_interp.h"      /* struct _is (PyInterpreterState) */
#if PY_VERSION_HEX >= 0x030B0000
#  include "pycore_frame.h"     /* _PyInterpreterFrame */
#endif
#if PY_VERSION_HEX >= 0x030E0000
#  include "pycore_debug_offsets.h"  /* _Py_DebugOffsets (3.13: in pycore_runtime.h) */
#endif
#if PY_VERSION_HEX >= 0x030E0000
#  include "pycore_stackref.h"  /* Py_TAG_BITS */
#endif

#define P(name, value) printf("%s %ld\n", (name), (long)(value))
#define OFF(name, type, member) P(name, offsetof(type, member))
#define NONE(name) P(name, -1)

static unsigned int state_word(const PyASCIIObject *o)
{
    unsigned int w;
    memcpy(&w, (const char *)o + offsetof(PyASCIIObject, state), sizeof w);
    return w;
}

static int fail(const char *why)
{
    fprintf(stderr, "probe: %s\n", why);
    return 1;
}

int main(void)
{
    printf("#version %s\n", PY_VERSION);

    /* ---- thread state -> innermost frame ---- */
#if PY_VERSION_HEX < 0x030B0000
    OFF("tstate.frame", PyThreadState, frame);
    NONE("tstate.cframe");
    NONE("cframe.current_frame");
    NONE("tstate.current_frame");
#elif PY_VERSION_HEX < 0x030D0000
    NONE("tstate.frame");
    OFF("tstate.cframe", PyThreadState, cframe);
    OFF("cframe.current_frame", _PyCFrame, current_frame);
    NONE("tstate.current_frame");
#else
    NONE("tstate.frame");
    NONE("tstate.cframe");
    NONE("cframe.current_frame");
    OFF("tstate.current_frame", PyThreadState, current_frame);
#endif
    OFF("tstate.interp", PyThreadState, interp);
    OFF("tstate.thread_id", PyThreadState, thread_id);
#if PY_VERSION_HEX >= 0x030B0000
    OFF("tstate.native_thread_id", PyThreadState, native_thread_id);
#else
    NONE("tstate.native_thread_id");
#endif
    OFF("tstate.next", PyThreadState, next);

    /* ---- frames ---- */
#if PY_VERSION_HEX < 0x030B0000
    OFF("frame.previous", PyFrameObject, f_back);
    OFF("frame.code", PyFrameObject, f_code);
    OFF("frame.lasti", PyFrameObject, f_lasti);
    NONE("frame.instr");
    NONE("frame.owner");
    NONE("frame.owner_cstack");
    /* 3.10 (bpo-27129) made f_lasti count 2-byte code units, 3.9 counts bytes. */
    P("frame.lasti_is_index", PY_VERSION_HEX >= 0x030A0000 ? 1 : 0);
#else
    OFF("frame.previous", _PyInterpreterFrame, previous);
#  if PY_VERSION_HEX < 0x030D0000
    OFF("frame.code", _PyInterpreterFrame, f_code);
    NONE("frame.lasti");
    OFF("frame.instr", _PyInterpreterFrame, prev_instr);
#  else
    OFF("frame.code", _PyInterpreterFrame, f_executable);
    NONE("frame.lasti");
    OFF("frame.instr", _PyInterpreterFrame, instr_ptr);
#  endif
    OFF("frame.owner", _PyInterpreterFrame, owner);
#  if PY_VERSION_HEX >= 0x030E0000
    /* 3.14 moved the frames without code to the top of the enum: owner >= INTERPRETER
       (3.14 also has CSTACK = 4 after it; 3.15 only INTERPRETER). */
    P("frame.owner_cstack", FRAME_OWNED_BY_INTERPRETER);
#  elif PY_VERSION_HEX >= 0x030C0000
    P("frame.owner_cstack", FRAME_OWNED_BY_CSTACK);
#  else
    NONE("frame.owner_cstack");
#  endif
    NONE("frame.lasti_is_index");
#endif
#if PY_VERSION_HEX >= 0x030E0000 && defined(Py_GIL_DISABLED)
    OFF("frame.tlbc_index", _PyInterpreterFrame, tlbc_index);
#else
    NONE("frame.tlbc_index");
#endif
#if PY_VERSION_HEX >= 0x030E0000
    P("frame.code_tag_bits", Py_TAG_BITS);
#else
    P("frame.code_tag_bits", 0);
#endif

    /* ---- code objects ---- */
    OFF("code.co_name", PyCodeObject, co_name);
    OFF("code.co_filename", PyCodeObject, co_filename);
#if PY_VERSION_HEX >= 0x030B0000
    OFF("code.co_qualname", PyCodeObject, co_qualname);
#else
    NONE("code.co_qualname");
#endif
    OFF("code.co_firstlineno", PyCodeObject, co_firstlineno);
#if PY_VERSION_HEX >= 0x030B0000
    OFF("code.co_code_adaptive", PyCodeObject, co_code_adaptive);
    NONE("code.co_code");
#else
    NONE("code.co_code_adaptive");
    OFF("code.co_code", PyCodeObject, co_code);
#endif
#if PY_VERSION_HEX >= 0x030A0000
    OFF("code.co_linetable", PyCodeObject, co_linetable);
    NONE("code.co_lnotab");
#else
    NONE("code.co_linetable");
    OFF("code.co_lnotab", PyCodeObject, co_lnotab);
#endif
    P("code.sizeof", sizeof(PyCodeObject));
#if PY_VERSION_HEX >= 0x030E0000 && defined(Py_GIL_DISABLED)
    OFF("code.co_tlbc", PyCodeObject, co_tlbc);
#else
    NONE("code.co_tlbc");
#endif

    /* ---- str: sizes, length, and the state bitfield ---- */
    P("unicode.asciiobject_size", sizeof(PyASCIIObject));
    P("unicode.compact_size", sizeof(PyCompactUnicodeObject));
    OFF("unicode.length", PyASCIIObject, length);
    {
        /* The state word is the member after `hash`. Bitfield layout is up
           to the compiler, so derive bit positions by setting each field on
           a zeroed struct and looking at the resulting word. */
        size_t state = offsetof(PyASCIIObject, hash) + sizeof(Py_hash_t);
        PyASCIIObject o;
        const unsigned char *b = (const unsigned char *)&o;
        size_t i;
        unsigned int w;

        if (state != offsetof(PyASCIIObject, state) || sizeof o.state != 4)
            return fail("state is not the 4-byte word right after hash");
        memset(&o, 0, sizeof o);
        o.state.interned = 3; o.state.kind = 7; o.state.compact = 1; o.state.ascii = 1;
        for (i = 0; i < sizeof o && b[i] == 0; i++)
            ;
        if (i < state || i >= state + 4)
            return fail("setting state bits changed a byte outside the state word");
        P("unicode.state", state);

        memset(&o, 0, sizeof o); o.state.compact = 1; w = state_word(&o);
        if (__builtin_popcount(w) != 1) return fail("compact is not one bit");
        P("unicode.state_compact_bit", __builtin_ctz(w));

        memset(&o, 0, sizeof o); o.state.ascii = 1; w = state_word(&o);
        if (__builtin_popcount(w) != 1) return fail("ascii is not one bit");
        P("unicode.state_ascii_bit", __builtin_ctz(w));

        memset(&o, 0, sizeof o); o.state.kind = 7; w = state_word(&o);
        if (w == 0 || (w >> __builtin_ctz(w)) != (1u << __builtin_popcount(w)) - 1)
            return fail("kind is not a contiguous bit range");
        P("unicode.state_kind_shift", __builtin_ctz(w));
        P("unicode.state_kind_bits", __builtin_popcount(w));
    }
    OFF("bytes.ob_sval", PyBytesObject, ob_sval);
    OFF("varobject.ob_size", PyVarObject, ob_size);
    OFF("object.ob_type", PyObject, ob_type);
    OFF("type.tp_name", PyTypeObject, tp_name);

    /* ---- runtime -> gilstate TSS key, interpreters, thread list ---- */
#if PY_VERSION_HEX < 0x030C0000
    OFF("runtime.autotsskey", _PyRuntimeState, gilstate.autoTSSkey);
#elif PY_VERSION_HEX < 0x030F0000
    OFF("runtime.autotsskey", _PyRuntimeState, autoTSSkey);
#else
    NONE("runtime.autotsskey");  /* 3.15: a C11 thread-local (_Py_tss_gilstate), no TSS key */
#endif
    OFF("tss.key", Py_tss_t, _key);
    OFF("runtime.interpreters_head", _PyRuntimeState, interpreters.head);
#if PY_VERSION_HEX < 0x030B0000
    OFF("interp.tstate_head", PyInterpreterState, tstate_head);
#else
    OFF("interp.tstate_head", PyInterpreterState, threads.head);   /* renamed in 3.11 */
#endif
#ifdef Py_GIL_DISABLED
    P("free_threaded", 1);
#else
    P("free_threaded", 0);
#endif

    /* ---- positions inside _Py_DebugOffsets (DEBUG_MEMBERS, generated below) ---- */
@DEBUG_PROBE@
#if PY_VERSION_HEX >= 0x030D0000
    OFF("debug.version", _Py_DebugOffsets, version);
    OFF("debug.free_threaded", _Py_DebugOffsets, free_threaded);
#else
    NONE("debug.version");
    NONE("debug.free_threaded");
#endif
    return 0;
}
"""


def _debug_probe():
    lines = []
    for field, (member, since) in DEBUG_MEMBERS.items():
        lines += [
            f"#if PY_VERSION_HEX >= {since:#010x}",
            f'    OFF("debug.{field}", _Py_DebugOffsets, {member});',
            "#else",
            f'    NONE("debug.{field}");',
            "#endif",
        ]
    return "\n".join(lines)


PROBE_C = PROBE_C.replace("@DEBUG_PROBE@", _debug_probe())

# Run by each target interpreter. Kept Python-2 compatible so that discovery
# can ask old pyenv versions (2.7, 3.6...) what they are and then skip them.
INFO_SCRIPT = r"""
import json, platform, sys, sysconfig
p = sysconfig.get_paths()
print(json.dumps({
    "implementation": platform.python_implementation(),
    "version": platform.python_version(),
    "version_info": list(sys.version_info[:3]),
    "include": p["include"],
    "platinclude": p.get("platinclude", p["include"]),
    "gil_disabled": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
}))
"""


class OffsetsError(Exception):
    pass


def interpreter_info(python):
    """Ask an interpreter about itself (version, include dirs)."""
    try:
        out = subprocess.run([python, "-c", INFO_SCRIPT], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise OffsetsError(f"cannot run {python}: {e}") from None
    info = json.loads(out)
    info["python"] = python
    # Free-threaded builds lay objects out differently (a bigger PyObject header): their own key.
    info["minor"] = "{}.{}".format(*info["version_info"][:2]) + ("t" if info["gil_disabled"] else "")
    return info


def root_interpreters():
    """The interpreters of scripts/roots.sh (Debian roots' launchers, free-threaded builds)."""
    roots = os.environ.get("TRACKLEAK_ROOTS", "/var/cache/trackleak/roots")
    found = sorted(glob.glob(os.path.join(roots, "*", "usr", "lib", "trackleak", "python3.*")))
    found += sorted(glob.glob(os.path.join(roots, "ft3.*", "bin", "python3.*t")))
    return [p for p in found if os.access(p, os.X_OK)]


def default_interpreters():
    """Every pyenv CPython >= 3.9, Debian's static /usr/bin/python3.11, and the roots' (roots.sh)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python")))
    if os.path.exists("/usr/bin/python3.11"):
        candidates.append("/usr/bin/python3.11")
    candidates += root_interpreters()
    found, seen = [], set()
    for python in candidates:
        real = os.path.realpath(python)
        if real in seen:
            continue
        seen.add(real)
        try:
            info = interpreter_info(python)
        except OffsetsError as e:
            print(f"note: skipping {e}", file=sys.stderr)
            continue
        if info["implementation"] != "CPython" or tuple(info["version_info"]) < MIN_VERSION:
            continue
        found.append(info)
    return found


def arena_size(python, free_threaded=False):
    """Bytes per pymalloc arena, from the interpreter's own sys._debugmallocstats() (stderr);
    -1 for a free-threaded build (mimalloc, no pymalloc arenas)."""
    if free_threaded:
        return -1
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # no PYTHONMALLOC
    try:
        r = subprocess.run([python, "-c", ARENA_SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise OffsetsError(f"cannot run {python}: {e}") from None
    for line in r.stderr.splitlines():
        words = line.replace("*", " ").split()
        if "bytes/arena" in words:
            return int(words[words.index("bytes/arena") - 1].replace(",", ""))
    raise OffsetsError(f"{python}: sys._debugmallocstats() names no arena size (pymalloc off?)")


def probe(info, cc=None):
    """Compile and run the probe against one interpreter's headers -> {field: int}."""
    cc = cc or os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OffsetsError(f"C compiler {cc!r} not found")
    incs = [info["include"], os.path.join(info["include"], "internal")]
    if info["platinclude"] not in incs:
        incs.append(info["platinclude"])
    # Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>: its include root,
    # which for an interpreter of another root (roots.sh) is not the host's /usr/include.
    incs.append(os.path.dirname(info["include"]))
    with tempfile.TemporaryDirectory(prefix="tl-offsets-") as tmp:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(PROBE_C)
        cmd = [cc, "-std=gnu11", "-DPy_BUILD_CORE"]
        for inc in incs:
            cmd += ["-I", inc]
        cmd += [src, "-o", exe]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise OffsetsError(
                "probe does not compile against {} ({}):\n{}\n{}".format(
                    info["python"], info["version"], " ".join(cmd), r.stdout
                )
            )
        r = subprocess.run([exe], capture_output=True, text=True)
        if r.returncode != 0:
            raise OffsetsError("probe failed for {}: {}".format(info["python"], r.stderr.strip()))
    values, header_version = {}, None
    for line in r.stdout.splitlines():
        name, value = line.split()
        if name == "#version":
            header_version = value
        else:
            values[name] = int(value)
    # Headers from a different patch release than the binary (possible with
    # distro -dev packages) would silently describe the wrong interpreter.
    if header_version != info["version"]:
        raise OffsetsError(
            "{} is {} but its headers say {}".format(info["python"], info["version"], header_version)
        )
    values["obmalloc.arena_size"] = arena_size(info["python"], info["gil_disabled"])
    if list(values) != FIELDS:
        raise OffsetsError(f"probe printed {list(values)}, expected {FIELDS}")
    return values


def version_key(version):
    """Sort key: "3.10" -> (3, 10, 0), so 3.9 comes before 3.10; "3.13t" right after "3.13"."""
    ft = version.endswith("t")
    return (*(int(x) for x in version.rstrip("t").split(".")), int(ft))


def generate(infos):
    """Probe every interpreter -> (tables by minor, patch versions by minor)."""
    tables, sources = {}, {}
    for info in infos:
        values = probe(info)
        minor = info["minor"]
        if minor not in tables:
            tables[minor], sources[minor] = values, [info]
            continue
        diffs = [
            f"  {k}: {sources[minor][0]['version']} says {tables[minor][k]}, "
            f"{info['version']} says {values[k]}"
            for k in FIELDS
            if tables[minor][k] != values[k]
        ]
        if diffs:
            raise OffsetsError(
                "interpreters of CPython {} disagree, so one table per minor is NOT enough:\n"
                "  ({} vs {})\n{}".format(
                    minor, sources[minor][0]["python"], info["python"], "\n".join(diffs)
                )
            )
        sources[minor].append(info)
    patches = {
        m: ", ".join(sorted({i["version"] for i in used}, key=version_key)) for m, used in sources.items()
    }
    return tables, patches


def render(tables, patches):
    """The JSON document, minors in numeric order, fields in FIELDS order."""
    doc = {
        "_comment": "Per-CPython-minor struct offsets (bytes) for the preload shim and the BPF "
        "frame walker. Generated by bpf/offsets/generate.py, which compiles a probe "
        "against each interpreter's own headers (-DPy_BUILD_CORE) and prints "
        "offsetof/sizeof; -1 = no such field in that version. Do not edit: rerun "
        "`python3 bpf/offsets/generate.py --write`; tests run `--check`.",
        "_generated_from": {m: patches[m] for m in sorted(patches, key=version_key)},
    }
    for minor in sorted(tables, key=version_key):
        doc[minor] = {k: tables[minor][k] for k in FIELDS}
    return json.dumps(doc, indent=2) + "\n"


def load(path):
    with open(path) as f:
        return json.load(f)


def check(tables, patches, path):
    """Compare regenerated tables with the committed file -> list of problems."""
    committed = load(path)
    problems = []
    for minor in sorted(tables, key=version_key):
        old = committed.get(minor)
        if old is None:
            problems.append(f"{minor}: missing from {path} (local {patches[minor]}); run generate.py --write")
            continue
        for k in FIELDS:
            if k not in old:
                problems.append(f"{minor}: {k}: missing from the committed table")
            elif old[k] != tables[minor][k]:
                problems.append(
                    f"{minor}: {k}: committed {old[k]}, local {patches[minor]} gives {tables[minor][k]}"
                )
        for k in sorted(set(old) - set(FIELDS)):
            problems.append(f"{minor}: {k}: in the committed table but not generated")
        used = committed.get("_generated_from", {}).get(minor, "")
        if not problems and set(patches[minor].split(", ")) - set(used.split(", ")):
            # Not an error: other patch releases agreeing is what we hope for.
            print(
                "note: {} {} agrees, though the table came from {}".format(
                    minor, patches[minor], used or "?"
                ),
                file=sys.stderr,
            )
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "pythons",
        nargs="*",
        help="interpreters to probe (default: pyenv versions >= 3.9 + /usr/bin/python3.11)",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="merge the result into the JSON file")
    mode.add_argument("--check", action="store_true", help="exit 1 if the JSON file disagrees")
    ap.add_argument("--json", default=DEFAULT_JSON, help="table path (default: %(default)s)")
    args = ap.parse_args(argv)

    try:
        infos = [interpreter_info(p) for p in args.pythons] or default_interpreters()
        for info in infos:
            if info["implementation"] != "CPython" or tuple(info["version_info"]) < MIN_VERSION:
                raise OffsetsError(
                    "{} is {} {}; need CPython >= 3.9".format(
                        info["python"], info["implementation"], info["version"]
                    )
                )
        if not infos:
            raise OffsetsError("no CPython >= 3.9 found")
        tables, patches = generate(infos)
    except OffsetsError as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2

    if args.check:
        problems = check(tables, patches, args.json)
        if problems:
            print(
                "generate.py --check: {} disagrees with the local interpreters:\n  {}".format(
                    args.json, "\n  ".join(problems)
                ),
                file=sys.stderr,
            )
            return 1
        print(
            "ok: {} matches {}".format(
                args.json, "; ".join(f"{m} ({patches[m]})" for m in sorted(patches, key=version_key))
            )
        )
        return 0
    if args.write:
        # Merge: minors not available on this machine keep their committed entry.
        if os.path.exists(args.json):
            old = load(args.json)
            for minor, table in old.items():
                if not minor.startswith("_") and minor not in tables:
                    if list(table) != FIELDS:
                        print(
                            f"generate.py: error: kept {minor} has other fields than FIELDS; "
                            "regenerate it on a machine with that interpreter",
                            file=sys.stderr,
                        )
                        return 2
                    tables[minor] = table
                    patches[minor] = old.get("_generated_from", {}).get(minor, "?")
                    print(f"note: kept {minor} from {args.json} (not probed this run)", file=sys.stderr)
        with open(args.json, "w") as f:
            f.write(render(tables, patches))
        print(f"wrote {args.json}")
        return 0
    sys.stdout.write(render(tables, patches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
