"""Compile bpf/alloc_probes.bpf.c with bcc and attach its programs as uprobes.

Attaching goes through our own ctypes prototype of libbcc's ``bpf_attach_uprobe``: bcc 0.26's
Python binding declares it with one argument fewer than libbcc takes (``ref_ctr_offset``), so
whatever happens to be in that register reaches the kernel and attaching fails at random with
EINVAL ("ref_ctr_offset mismatch"). Declaring the full prototype and passing 0 fixes it
deterministically; no retries. We keep the perf-event fds ourselves and close them to detach.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
from dataclasses import dataclass, field

from trackleak import config, sampling
from trackleak.ebpf import AttachError, btf, headers
from trackleak.ebpf.privileges import can_attach
from trackleak.ebpf.python import bpf_dir
from trackleak.ebpf.thresholds import ThresholdTable

PROBE_SOURCE = "alloc_probes.bpf.c"

# Program per probed function (bpf/alloc_probes.bpf.c entry points).
ENTRY_PROGRAMS = {
    "malloc": "tl_malloc_enter",
    "calloc": "tl_calloc_enter",
    "realloc": "tl_realloc_enter",
    "posix_memalign": "tl_posix_memalign_enter",
    "aligned_alloc": "tl_memalign_enter",
    "memalign": "tl_memalign_enter",
    "valloc": "tl_valloc_enter",
    "free": "tl_free",
}
RETURN_PROGRAM = "tl_alloc_return"
# pymalloc arenas (issue 10): libc's mmap (entry + return) and munmap, filtered in the program to
# the interpreter's own arena calls (struct tl_target.arena_*).
ARENA_PROGRAMS = {"mmap": "tl_mmap_enter", "munmap": "tl_munmap"}
ARENA_RETURN_PROGRAM = "tl_mmap_return"
ARENAS_ENV = "TRACKLEAK_EBPF_ARENAS"  # "0": no arena probes (default on: they cost next to nothing)
BPF_PROBE_ENTRY, BPF_PROBE_RETURN = 0, 1

TRACEFS_UPROBE_EVENTS = ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events")


def remove_tracefs_events(prefix: str) -> int:
    """Remove tracefs uprobe events whose name starts with PREFIX (libbcc's fallback path names
    them PREFIX_bcc_PID; its own detach only looks under /sys/kernel/debug/tracing)."""
    removed = 0
    for events in TRACEFS_UPROBE_EVENTS:
        try:
            with open(events) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            # "p:uprobes/NAME /path:0xOFFSET"
            head = line.split(None, 1)[0] if line.strip() else ""
            group_name = head.split(":", 1)[1] if ":" in head else ""
            if group_name.split("/", 1)[-1].startswith(prefix):
                try:  # os.write: Python's append mode seeks, which tracefs refuses
                    fd = os.open(events, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, f"-:{group_name}\n".encode())
                    finally:
                        os.close(fd)
                    removed += 1
                except OSError:
                    pass
        break
    return removed


def import_bcc():
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        raise AttachError(
            "bcc is not importable (install python3-bpfcc: apt-get install bpfcc-tools python3-bpfcc; "
            "a venv needs --system-site-packages)"
        ) from None
    return bcc


class _LibBCC:
    """libbcc functions with prototypes we declare ourselves (a private CDLL handle, so bcc's
    own declarations are left untouched)."""

    def __init__(self) -> None:
        lib = ct.CDLL("libbcc.so.0", use_errno=True)
        self.attach_uprobe = lib.bpf_attach_uprobe
        # int bpf_attach_uprobe(int progfd, enum bpf_probe_attach_type attach_type,
        #                       const char *ev_name, const char *binary_path,
        #                       uint64_t offset, pid_t pid, uint32_t ref_ctr_offset);
        self.attach_uprobe.restype = ct.c_int
        self.attach_uprobe.argtypes = [
            ct.c_int,
            ct.c_int,
            ct.c_char_p,
            ct.c_char_p,
            ct.c_uint64,
            ct.c_int,
            ct.c_uint32,
        ]
        self.detach_uprobe = lib.bpf_detach_uprobe
        self.detach_uprobe.restype = ct.c_int
        self.detach_uprobe.argtypes = [ct.c_char_p]
        self.close_perf_event_fd = lib.bpf_close_perf_event_fd
        self.close_perf_event_fd.restype = ct.c_int
        self.close_perf_event_fd.argtypes = [ct.c_int]
        # int bpf_lookup_and_delete(int fd, void *key, void *value)
        self.lookup_and_delete = getattr(lib, "bpf_lookup_and_delete", None)
        if self.lookup_and_delete is not None:
            self.lookup_and_delete.restype = ct.c_int
            self.lookup_and_delete.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]


@dataclass
class Probe:
    func: str
    program: str
    retprobe: bool
    path: str
    offset: int
    pid: int
    ev_name: bytes
    fd: int


# Map sizes of bpf/trackleak.h that Tunables.limits may override (-D), e.g. small ones in tests.
LIMITS = (
    "TL_MAX_TARGETS",
    "TL_MAX_SITES",
    "TL_MAX_LIVE",
    "TL_MAX_PENDING",
    "TL_MAX_ARENA_PENDING",
    "TL_MAX_STACKS",
    "TL_MAX_PATHS",
)


def arenas_default() -> bool:
    """Arena probes unless TRACKLEAK_EBPF_ARENAS says no (0, false, no, off)."""
    return os.environ.get(ARENAS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Tunables:
    sample_rate: int = sampling.DEFAULT_SAMPLE_RATE
    min_size: int = sampling.DEFAULT_MIN_SIZE
    native_stacks: int = 1  # 0 never, 1 when the direct caller is in libc, 2 always
    sample_bytes: int | None = None  # TRACKLEAK_SAMPLE_BYTES: the sampling interval R directly
    limits: dict[str, int] = field(default_factory=dict)  # {"TL_MAX_SITES": 64, ...}
    # pymalloc arenas of Python targets charged to the line that forced them (TRACKLEAK_EBPF_ARENAS)
    arenas: bool = field(default_factory=arenas_default)
    # Python frames of a sampled allocation's call path (trackleak.stacks; 0: no paths)
    stack_depth: int = config.default("stack_depth")

    @property
    def interval(self) -> int:
        """The sampling interval R in bytes (trackleak.sampling); 0: every allocation sampled."""
        return sampling.interval_bytes(self.sample_rate, self.sample_bytes)

    def thresholds(self) -> ThresholdTable:
        return ThresholdTable.build(self.interval)

    def cflags(self) -> list[str]:
        if self.sample_rate < 1:
            raise AttachError("TRACKLEAK_SAMPLE_RATE must be >= 1")
        unknown = set(self.limits) - set(LIMITS)
        if unknown:
            raise AttachError(f"unknown map limit(s): {', '.join(sorted(unknown))}")
        if not 0 <= int(self.stack_depth) <= config.MAX_STACK_DEPTH:
            raise AttachError(
                f"the stack depth must be 0 to {config.MAX_STACK_DEPTH}, not {self.stack_depth}"
            )
        flags = [
            f"-DTL_MIN_SIZE={int(self.min_size)}",
            f"-DTL_STACK_DEPTH={int(self.stack_depth)}",
            f"-DTL_NATIVE_STACKS={int(self.native_stacks)}",
            *self.thresholds().cflags(),
            *(f"-D{name}={int(value)}" for name, value in sorted(self.limits.items())),
            f"-I{bpf_dir()}",
        ]
        # No BTF: the program builds without Python frames (native attribution only).
        with contextlib.suppress(btf.BTFError):
            flags.append(f"-DTL_TASK_FSBASE={btf.task_fsbase_offset()}")
        return flags


def check_privileges() -> None:
    if not can_attach()[0]:
        raise AttachError(
            "not permitted: attaching eBPF probes needs root (or CAP_BPF + CAP_PERFMON); run with sudo"
        )


@dataclass
class Loader:
    tunables: Tunables = field(default_factory=Tunables)
    bpf: object = None
    probes: list[Probe] = field(default_factory=list)
    headers_how: str = ""
    python_frames: bool = False

    def load(self) -> None:
        check_privileges()
        bcc = import_bcc()
        found = headers.find_kernel_headers()
        if found is None:
            raise AttachError(
                "no kernel headers: install linux-headers-$(uname -r) or the distribution's generic "
                "headers (Debian: linux-headers-amd64), or set BCC_KERNEL_SOURCE"
            )
        headers.apply(found)
        self.headers_how = found.how
        cflags = self.tunables.cflags()
        self.python_frames = any(f.startswith("-DTL_TASK_FSBASE=") for f in cflags)
        src = str(bpf_dir() / PROBE_SOURCE)
        try:
            self.bpf = bcc.BPF(src_file=src.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception with compiler output on stderr
            raise AttachError(f"cannot compile {src} with bcc ({found.how}): {e}") from None
        self._lib = _LibBCC()
        self._fill_thresholds()
        self._verify_programs()

    def _verify_programs(self) -> None:
        """Load (verify) every program now, before any probe is attached. The verifier takes
        seconds for the entry programs' frame walks at a large --stack-depth; done lazily, probe by
        probe, the allocation probes of a target ran for those seconds while its free probe was not
        yet attached, and every block they sampled and freed meanwhile stayed live (a healthy line
        showed 10-25 % retention). bcc keeps each loaded function, so attach() finds it."""
        bcc = import_bcc()
        arenas = {ARENA_RETURN_PROGRAM, *ARENA_PROGRAMS.values()} if self.tunables.arenas else set()
        for program in sorted({RETURN_PROGRAM, *ENTRY_PROGRAMS.values(), *arenas}):
            try:
                self.bpf.load_func(program.encode(), bcc.BPF.KPROBE)  # type: ignore[attr-defined]
            except Exception as e:
                raise AttachError(f"the kernel refused the BPF program {program}: {e}") from None

    def _fill_thresholds(self) -> None:
        """p(s)/s per size bucket into tl_pslope, before any probe is attached."""
        table = self.tunables.thresholds()
        if table.sample_all:
            return
        pslope = self.table("tl_pslope")
        keys = (pslope.Key * len(table.slopes))(*range(len(table.slopes)))
        values = (pslope.Leaf * len(table.slopes))(*table.slopes)
        try:
            pslope.items_update_batch(keys, values)
        except Exception:  # no batch operations on this kernel: one by one
            for i, slope in enumerate(table.slopes):
                pslope[pslope.Key(i)] = pslope.Leaf(slope)

    def lookup_and_delete(self, name: str, key) -> object | None:
        """Atomically read and delete one entry of a hash map (kernel >= 5.14); None when the
        kernel cannot (the caller falls back to read + delete) or the key is gone."""
        table = self.table(name)
        leaf = table.Leaf()
        fn = self._lib.lookup_and_delete
        if fn is None:
            return None
        if fn(table.map_fd, ct.byref(key), ct.byref(leaf)) != 0:
            return None
        return leaf

    def table(self, name: str):
        return self.bpf[name.encode()]  # type: ignore[index]

    def attach(
        self, func: str, path: str, offset: int, pid: int, retprobe: bool = False, program: str | None = None
    ) -> Probe:
        bcc = import_bcc()
        if program is None:
            program = RETURN_PROGRAM if retprobe else ENTRY_PROGRAMS[func]
        fn = self.bpf.load_func(program.encode(), bcc.BPF.KPROBE)  # type: ignore[attr-defined]
        kind = "r" if retprobe else "p"
        ev_name = f"tl_{kind}_{os.getpid()}_{pid}_{offset:x}".encode()
        fd = self._lib.attach_uprobe(
            fn.fd, BPF_PROBE_RETURN if retprobe else BPF_PROBE_ENTRY, ev_name, path.encode(), offset, pid, 0
        )
        if fd < 0:
            err = ct.get_errno()
            # libbcc's tracefs fallback may have created the event before failing: remove it
            remove_tracefs_events(ev_name.decode())
            why = os.strerror(err) if err else "unknown error"
            if err in (errno.EPERM, errno.EACCES):
                raise AttachError(f"not permitted to attach uprobes to process {pid} ({why})")
            if err == errno.ESRCH:
                raise AttachError(f"no such process: {pid}")
            if err == errno.EINVAL:
                why += (
                    "; another tool may hold a uprobe at the same address with a different ref_ctr_offset "
                    "(bcc 0.26's own tools pass garbage there): stop it, or mount tracefs for the fallback"
                )
            raise AttachError(f"cannot attach a uprobe to {func} in {path} for process {pid}: {why}")
        probe = Probe(func, program, retprobe, path, offset, pid, ev_name, fd)
        self.probes.append(probe)
        return probe

    def detach(self, probe: Probe) -> None:
        if probe.fd >= 0:
            self._lib.close_perf_event_fd(probe.fd)
            probe.fd = -1
        remove_tracefs_events(probe.ev_name.decode())
        if probe in self.probes:
            self.probes.remove(probe)

    def detach_pid(self, pid: int) -> None:
        # The reverse of the attach order (EbpfSession.attach_probes: free first): the allocation
        # probes go first and free last, so every sample's free is seen for as long as samples can
        # be made. Each detach waits for the kernel (~0.13 s a probe on 6.x: ~2 s for a target's
        # 16, bench/bench_ebpf_detach.py): free detached first left every block allocated and
        # freed meanwhile live, older than the duty cycle's hold by the time the last probe was
        # gone (trackleak.fleet.routes: a healthy line held 10-18 % of a leak's bytes).
        for probe in reversed([p for p in self.probes if p.pid == pid]):
            self.detach(probe)

    def close(self) -> None:
        for probe in list(self.probes):
            self.detach(probe)
        if self.bpf is not None:
            self.bpf.cleanup()  # type: ignore[attr-defined]
            self.bpf = None
