"""The eBPF source: attach uprobes (bcc) to a running process's allocator, no restart.

Modules, by job:
  headers   where bcc finds kernel headers (the running kernel's, else a merged generic tree)
  btf       kernel struct offsets read from /sys/kernel/btf/vmlinux (task_struct.thread.fsbase)
  procinfo  a target's maps, its libc and its glibc thread layout (libthread_db descriptors)
  python    which CPython a target runs and the offsets handed to the BPF frame walk
  loader    compile bpf/alloc_probes.bpf.c, attach/detach probes (works around bcc 0.26's
            bpf_attach_uprobe prototype), read the maps
  session   one attach session over several pids -> RetentionTable rows (source "ebpf")
  cli       `trackleak-agent --pid ...` (called by the package's agent entry point)

The bcc import is deferred to the loader: everything else imports without bcc.
"""

from trackleak.errors import UserError


class AttachError(UserError):
    """The agent cannot attach (privileges, missing pid, kernel or bcc missing): one line, exit 2."""
