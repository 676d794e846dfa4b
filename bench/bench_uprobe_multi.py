# SPDX-License-Identifier: MIT
"""What a uprobe-multi link would save the duty cycle: attach and detach times of one target's
allocator uprobes as two BPF links (kernel 6.6+, BPF_TRACE_UPROBE_MULTI), to set beside
bench_ebpf_detach.py's perf-event uprobes (a benchmark and a prototype, not product code; root).

The agent attaches one perf-event uprobe per function and return (bcc 0.26 has no API for
uprobe-multi links), and the kernel removes each under a global mutex after a grace period:
~0.13 s a probe. A link holds many uprobes and is removed with one grace period. Here one
trivial program is linked at the entry of every allocator function of the target's libc, and once
more at their returns, made with a raw BPF_LINK_CREATE; the rounds print attach and detach times
and the number of calls the program saw (so the probes did fire).

    sudo .venv/bin/python bench/bench_uprobe_multi.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time

from elftools.elf.elffile import ELFFile

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
FUNCS = ("malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc", "valloc", "pvalloc")
TARGET = "import time\nwhile True:\n    x = [bytearray(1000) for _ in range(100)]\n    time.sleep(0.001)\n"
PROGRAM = b"""
BPF_ARRAY(hits, u64, 1);
int probe(struct pt_regs *ctx) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_LINK_CREATE = 28
NR_BPF = 321  # x86_64


def _offsets(path: str) -> list[int]:
    with open(path, "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        found = (dynsym.get_symbol_by_name(name) for name in FUNCS)
        return sorted({sym[0]["st_value"] for sym in found if sym})


def _link(libc, prog_fd: int, path, offsets, pid: int, ret: bool) -> int:
    """BPF_LINK_CREATE of a uprobe_multi link (union bpf_attr.link_create, offsets as in uapi)."""
    attr = (ctypes.c_uint8 * 64)()

    def put(at: int, ctype, value) -> None:
        ctypes.memmove(ctypes.addressof(attr) + at, ctypes.byref(ctype(value)), ctypes.sizeof(ctype))

    put(0, ctypes.c_uint32, prog_fd)
    put(8, ctypes.c_uint32, BPF_TRACE_UPROBE_MULTI)
    put(16, ctypes.c_uint64, ctypes.addressof(path))
    put(24, ctypes.c_uint64, ctypes.addressof(offsets))
    put(48, ctypes.c_uint32, len(offsets))
    put(52, ctypes.c_uint32, BPF_F_UPROBE_MULTI_RETURN if ret else 0)
    put(56, ctypes.c_uint32, pid)
    fd = libc.syscall(NR_BPF, BPF_LINK_CREATE, attr, ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_LINK_CREATE (uprobe_multi): {os.strerror(err)}")
    return fd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from trackleak.ebpf import headers
    from trackleak.ebpf.loader import import_bcc

    found = headers.find_kernel_headers()
    if found is None:
        sys.exit("no kernel headers: run scripts/setup.sh")
    headers.apply(found)
    bcc = import_bcc()
    bpf = bcc.BPF(text=PROGRAM)
    fn = bpf.load_func(b"probe", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    path = ctypes.create_string_buffer(LIBC.encode())
    offsets = _offsets(LIBC)
    arr = (ctypes.c_uint64 * len(offsets))(*offsets)
    target = subprocess.Popen([sys.executable, "-c", TARGET])
    try:
        time.sleep(0.3)
        for _ in range(args.rounds):
            t0 = time.monotonic()
            fds = [_link(libc, fn.fd, path, arr, target.pid, ret) for ret in (False, True)]
            attach = time.monotonic() - t0
            time.sleep(0.3)
            hits = bpf[b"hits"][ctypes.c_int(0)].value
            t0 = time.monotonic()
            for fd in fds:
                os.close(fd)
            detach = time.monotonic() - t0
            print(
                f"{2 * len(offsets)} uprobes in 2 links: attach {attach * 1000:.1f} ms, "
                f"detach {detach * 1000:.1f} ms; {hits} calls seen so far"
            )
    finally:
        target.kill()
        target.wait()
        bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
