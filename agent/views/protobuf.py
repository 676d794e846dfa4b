# SPDX-License-Identifier: MIT
"""The few pieces of the protobuf wire format a pprof profile needs, written by hand.

Wire format (protobuf.dev/programming-guides/encoding): a message is a sequence of fields, each
a key ``(field_number << 3) | wire_type`` as a varint, then the value: wire type 0 a varint
(int64 and uint64; a negative int64 is its two's complement on 64 bits, ten bytes), wire type 2 a
length-delimited byte string (strings, embedded messages, packed repeated varints). Fields equal
to their default (0, empty) may be left out, as proto3 writers do.
"""

from __future__ import annotations

from typing import Iterable

VARINT = 0
LEN = 2
_MASK64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Base-128 varint, least significant group first; negative values on 64 bits."""
    value &= _MASK64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


class Message:
    """A message being written: append fields in any order (pprof readers accept any)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def number(self, number: int, value: int) -> Message:
        """int64/uint64/bool field; the default 0 is left out."""
        if value:
            self.buf += key(number, VARINT) + varint(int(value))
        return self

    def blob(self, number: int, value: bytes, *, keep_empty: bool = False) -> Message:
        if value or keep_empty:
            self.buf += key(number, LEN) + varint(len(value)) + value
        return self

    def string(self, number: int, value: str, *, keep_empty: bool = False) -> Message:
        return self.blob(number, value.encode("utf-8", "surrogateescape"), keep_empty=keep_empty)

    def message(self, number: int, value: Message) -> Message:
        """An embedded message (written even when empty: its presence can matter)."""
        return self.blob(number, bytes(value.buf), keep_empty=True)

    def packed(self, number: int, values: Iterable[int]) -> Message:
        """A packed repeated int64/uint64 field (the proto3 default encoding)."""
        body = b"".join(varint(int(v)) for v in values)
        return self.blob(number, body)

    def __bytes__(self) -> bytes:
        return bytes(self.buf)
