"""Kernel struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bcc compiles against generic headers that may belong to another kernel version, so the one
kernel struct the BPF program reads (``task_struct.thread.fsbase``: the thread pointer, from
which glibc's ``pthread_getspecific`` is emulated) must not come from those headers. BTF
describes the running kernel exactly. A small reader is enough: types, members, strings.
"""

from __future__ import annotations

import struct
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"

# BTF kinds and the size of the data that follows each `struct btf_type` (12 bytes).
_STRUCT, _UNION = 4, 5
_EXTRA_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_EXTRA_PER_VLEN = {
    4: 12,
    5: 12,
    6: 8,
    13: 8,
    15: 12,
    19: 12,
}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_TYPEDEF_LIKE = {8, 9, 10, 11, 18}  # TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG


class BTFError(Exception):
    pass


class BTF:
    def __init__(self, data: bytes):
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise BTFError("not little-endian BTF")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[tuple] = [()]  # id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: list[tuple[str, int, int]] = []
            if kind in (_STRUCT, _UNION):
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos)
                    pos += 12
                    bit_off = m_off & 0xFFFFFF if kflag else m_off
                    members.append((self._str(m_name), m_type, bit_off))
            elif kind in _EXTRA_PER_VLEN:
                pos += vlen * _EXTRA_PER_VLEN[kind]
            else:
                pos += _EXTRA_FIXED.get(kind, 0)
            tid = len(self.types)
            name = self._str(name_off)
            self.types.append((kind, name, size_or_type, members))
            if name and kind in (_STRUCT, _UNION):
                self._by_name.setdefault((kind, name), tid)

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode("ascii", "replace")

    def _resolve(self, tid: int) -> int:
        while self.types[tid] and self.types[tid][0] in _TYPEDEF_LIKE:
            tid = self.types[tid][2]
        return tid

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of ``a.b.c`` inside ``struct struct_name`` (anonymous members searched)."""
        tid = self._by_name.get((_STRUCT, struct_name))
        if tid is None:
            raise BTFError(f"struct {struct_name} not in BTF")
        total = 0
        for field in path.split("."):
            found = self._find(tid, field)
            if found is None:
                raise BTFError(f"{struct_name}.{path}: no member {field!r}")
            bits, tid = found
            total += bits
        if total % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return total // 8

    def _find(self, tid: int, field: str) -> tuple[int, int] | None:
        __kind, _name, _size, members = self.types[self._resolve(tid)]
        for m_name, m_type, bit_off in members:
            if m_name == field:
                return bit_off, m_type
            if not m_name:  # anonymous struct/union: look inside
                inner = self._find(m_type, field)
                if inner is not None:
                    return bit_off + inner[0], inner[1]
        return None


@lru_cache(maxsize=1)
def vmlinux() -> BTF:
    try:
        with open(VMLINUX, "rb") as f:
            return BTF(f.read())
    except OSError as e:
        raise BTFError(f"cannot read {VMLINUX}: {e.strerror}") from None


def task_fsbase_offset() -> int:
    """offsetof(struct task_struct, thread.fsbase) in the running kernel (x86-64)."""
    return vmlinux().member_offset("task_struct", "thread.fsbase")
