"""What the agent needs to know about a target process before attaching.

- the libc it actually maps (probes go on that file, so containers and odd installs work);
- the allocator functions in it and where exactly to probe each (``probe_offset``);
- glibc's thread layout (``struct pthread``'s ``specific`` array and ``struct pthread_key_data``),
  read from the ``_thread_db_*`` descriptors glibc exports for libthread_db — the same data gdb
  uses, so nothing about glibc's private structs is hard-coded here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from trackleak.ebpf import AttachError
from trackleak.symbolize.elf import ElfInfo, Mapping, elf_info, proc_path, read_maps

# The allocator family the BPF program handles (its program names are tl_<name>_enter/_return).
ALLOC_FUNCS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign", "valloc")
FREE_FUNCS = ("free",)
# reallocarray is not probed: glibc implements it by calling realloc itself, whose probe fires.
# pymalloc arenas come from these (issue 10; the program keeps only the interpreter's arena calls).
ARENA_FUNCS = ("mmap", "munmap")

_LIBC_RE = re.compile(r"/libc(?:-[\d.]+)?\.so(?:\.6)?$")


def check_exists(pid: int) -> None:
    if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
        raise AttachError(f"no such process: {pid}")


def check_pid(pid: int) -> None:
    check_exists(pid)
    try:
        with open(f"/proc/{pid}/maps") as f:
            f.readline()
    except PermissionError:
        raise AttachError(f"not permitted to read process {pid} (run as root)") from None
    except ProcessLookupError:
        raise AttachError(f"no such process: {pid}") from None
    except OSError as e:
        raise AttachError(f"cannot read process {pid}: {e.strerror}") from None


def process_maps(pid: int) -> list[Mapping]:
    check_pid(pid)
    try:
        return read_maps(pid)
    except FileNotFoundError:
        raise AttachError(f"no such process: {pid}") from None


def find_libc(pid: int, maps: list[Mapping]) -> str:
    """Path (as the target sees it) of the libc the target maps."""
    for m in maps:
        if _LIBC_RE.search(m.path):
            return m.path
    if not maps:
        raise AttachError(f"process {pid} has no user memory to probe (a kernel thread or a zombie)")
    exe = os.readlink(f"/proc/{pid}/exe") if os.path.exists(f"/proc/{pid}/exe") else "?"
    raise AttachError(
        f"process {pid} ({exe}) maps no glibc libc.so.6 (static or musl binaries are not supported)"
    )


@dataclass(frozen=True)
class GlibcLayout:
    """Where a thread's pthread_getspecific() data lives, for this libc."""

    specific: int  # offsetof(struct pthread, specific): array of pointers to 2nd-level blocks
    second_level: int  # PTHREAD_KEY_2NDLEVEL_SIZE: keys per 2nd-level block
    key_data_size: int  # sizeof(struct pthread_key_data)
    key_data_data: int  # offsetof(struct pthread_key_data, data)


def glibc_layout(libc: ElfInfo) -> GlibcLayout:
    """From glibc's libthread_db descriptors: uint32 {element bits, count, offset} each.

    ``specific[0]`` points at ``specific_1stblock`` (glibc sets it at thread creation), so one
    formula covers every key: ``specific[key / L2][key % L2].data``.
    """
    specific = libc.read_u32s("_thread_db_pthread_specific", 3)
    level2 = libc.read_u32s("_thread_db_pthread_key_data_level2_data", 3)
    data = libc.read_u32s("_thread_db_pthread_key_data_data", 3)
    size = libc.read_u32s("_thread_db_sizeof_pthread_key_data", 1)
    if not (specific and level2 and data and size):
        raise AttachError(
            f"{libc.path} lacks glibc's _thread_db_* descriptors; cannot find Python thread states"
        )
    return GlibcLayout(
        specific=specific[2], second_level=level2[1], key_data_size=size[0], key_data_data=data[2]
    )


@dataclass(frozen=True)
class ProbePoint:
    func: str
    path: str  # the file as the target sees it
    offset: int  # file offset of the probed instruction
    insn_offset: int  # bytes past the function start (0 = entry)


# Leading instructions that leave the stack, memory and the arguments the probe reads untouched
# (they write flags, or a scratch register): a probe may be moved past them to the first
# instruction the kernel emulates (a branch), which avoids the single-step out of line that
# non-emulated instructions need (~4.3 us vs ~0.9 us a hit here). glibc 2.42 (Debian sid) starts
# malloc, free, realloc and calloc so; 2.36/2.41 start most with push, which is emulated.
# instruction -> the registers it writes besides flags
_SKIPPABLE = {
    bytes.fromhex("4885ff"): frozenset(),  # test %rdi,%rdi
    bytes.fromhex("4885f6"): frozenset(),  # test %rsi,%rsi
    bytes.fromhex("f30f1efa"): frozenset(),  # endbr64
    bytes.fromhex("4989f1"): frozenset({"r9"}),  # mov %rsi,%r9 (2.42 realloc)
    bytes.fromhex("4889f8"): frozenset({"rax"}),  # mov %rdi,%rax (2.42 calloc)
    bytes.fromhex("48f7e6"): frozenset({"rax", "rdx"}),  # mul %rsi (2.42 calloc: n * size)
}
# The argument registers each entry probe reads (bpf/alloc_probes.bpf.c entry points).
PROBE_READS = {"posix_memalign": frozenset({"rdi", "rsi", "rdx"})}
DEFAULT_READS = frozenset({"rdi", "rsi"})


def _emulated_branch(code: bytes) -> bool:
    return bool(code) and (
        0x70 <= code[0] <= 0x7F  # jcc rel8
        or code[0] in (0xE8, 0xE9, 0xEB)  # call, jmp rel32/rel8
        or (len(code) > 1 and code[0] == 0x0F and 0x80 <= code[1] <= 0x8F)  # jcc rel32
    )


def probe_skip(code: bytes, reads: frozenset = DEFAULT_READS) -> int:
    """Bytes to skip at the start of a function so its probe lands on an emulated branch (0 = none).

    Only instructions that write flags or registers the probe does not read may be skipped: the
    arguments, the stack (so [sp] is the return address, for the return probe too) are then as at
    entry, and the branch runs on every call, so no call is missed.
    """
    pos = 0
    for _ in range(4):
        if _emulated_branch(code[pos:]):
            return pos
        for insn, writes in _SKIPPABLE.items():
            if code[pos : pos + len(insn)] == insn and not writes & reads:
                pos += len(insn)
                break
        else:
            return 0
    return 0


def free_probe_skip(code: bytes) -> int:
    return probe_skip(code, frozenset({"rdi"}))


def probe_points(pid: int, libc_path: str, move_free: bool = True) -> dict[str, ProbePoint]:
    info = elf_info(proc_path(pid, libc_path))
    points = {}
    seen: set[int] = set()
    for func in ALLOC_FUNCS + FREE_FUNCS:
        sym = info.symbol(func)
        if sym is None or sym[0] in seen:
            continue  # absent, or an alias of one already probed (glibc: memalign = aligned_alloc)
        seen.add(sym[0])
        skip = 0
        if move_free:
            # Every probed function, not only free: glibc 2.42's malloc, realloc and calloc start
            # with non-emulated instructions too (Debian sid; measured with bench/bench_ebpf.py:
            # a Python workload ran at 2.2-3.0x attached on sid against 1.4-1.5x on trixie).
            skip = probe_skip(info.read(sym[0], 24), PROBE_READS.get(func, DEFAULT_READS))
        offset = info.vaddr_to_offset(sym[0] + skip)
        if offset is None:
            continue
        points[func] = ProbePoint(func, libc_path, offset, skip)
    missing = [f for f in ("malloc", "free", "realloc", "calloc") if f not in points]
    if missing:
        raise AttachError(f"{libc_path}: no {', '.join(missing)} symbol to probe")
    return points


def arena_probe_points(pid: int, libc_path: str) -> dict[str, ProbePoint]:
    """Where to probe mmap and munmap in the target's libc (empty when either is missing)."""
    info = elf_info(proc_path(pid, libc_path))
    points = {}
    for func in ARENA_FUNCS:
        sym = info.symbol(func)
        offset = info.vaddr_to_offset(sym[0]) if sym is not None else None
        if offset is None:
            return {}
        points[func] = ProbePoint(func, libc_path, offset, 0)
    return points
