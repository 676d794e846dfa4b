# SPDX-License-Identifier: MIT
"""Reading other processes' /proc files: hostile input, bounded reads, nothing trusted.

Every read has a byte limit (a process controls its own environment, command line and, through
its mappings, the size of its maps file); text is decoded with errors="replace"; what we keep is
validated and cut to a fixed length. Errors (the process exited, permission denied) are ``None``.
"""

from __future__ import annotations

import os
import re

MAPS_LIMIT = 8 << 20  # a big process's maps is ~1 MiB; past this we stop reading
ENVIRON_LIMIT = 1 << 20  # ARG_MAX-sized environments exist; we read at most 1 MiB
CGROUP_LIMIT = 64 << 10
CMDLINE_LIMIT = 64 << 10
COMMAND_MAX = 256  # characters of the command kept in a row

# The only variables read from another process's environment (the original deployment's): never
# credentials (ELASTICSEARCH_PASSWORD, ELASTICSEARCH_API_KEY...), never anything else.
ENV_NAMES = ("ENABLE_ELASTICSEARCH", "ELASTICSEARCH_INDEX", "NOMAD_JOB_NAME")
_INDEX_FORBIDDEN = re.compile(r'[\\/*?"<>| ,#:\x00-\x1f\x7f]')
_JOB_OK = re.compile(r"[\w.@+=:/-]{1,128}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Arguments that look like secrets: --password=x, token=x, --api-key x, user:pass@ in URLs.
_SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|credential|auth)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
REDACTED = "***"


def read_limited(path: str, limit: int) -> bytes | None:
    """At most LIMIT bytes of PATH; None when it cannot be read (gone, not permitted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path: str, limit: int) -> str | None:
    data = read_limited(path, limit)
    return None if data is None else data.decode("utf-8", errors="replace")


def cgroups(pid: int) -> list[str]:
    """The cgroup paths of PID (v2: one "0::/path" line; v1: one per hierarchy)."""
    text = read_text(f"/proc/{pid}/cgroup", CGROUP_LIMIT)
    if not text:
        return []
    out = []
    for line in text.splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            out.append(_CONTROL.sub("?", parts[2])[:1024])
    return out


def es_environment(pid: int) -> dict[str, str]:
    """ENABLE_ELASTICSEARCH, ELASTICSEARCH_INDEX and NOMAD_JOB_NAME of PID, validated; nothing
    else is kept (the environment is read up to ENVIRON_LIMIT and parsed name by name)."""
    data = read_limited(f"/proc/{pid}/environ", ENVIRON_LIMIT)
    if not data:
        return {}
    wanted = {name.encode(): name for name in ENV_NAMES}
    out: dict[str, str] = {}
    for entry in data.split(b"\x00"):
        name, sep, raw = entry.partition(b"=")
        if not sep or name not in wanted:
            continue
        value = raw[:512].decode("utf-8", errors="replace").strip()
        key = wanted[name]
        if key == "ENABLE_ELASTICSEARCH":
            out[key] = "1" if value.lower() in ("1", "true", "yes", "on") else "0"
        elif key == "ELASTICSEARCH_INDEX":
            # Elasticsearch's own rules: lowercase, no \ / * ? " < > | space , # :, not starting
            # with - _ +, at most 255 bytes. Anything else is dropped (the shipper's default applies).
            if (
                value
                and value == value.lower()
                and not _INDEX_FORBIDDEN.search(value)
                and not value.startswith(("-", "_", "+"))
                and value not in (".", "..")
                and len(value.encode()) <= 255
            ):
                out[key] = value
        elif key == "NOMAD_JOB_NAME" and _JOB_OK.fullmatch(value):
            out[key] = value
    return out


def redact_argv(argv: list[str]) -> list[str]:
    """ARGV with values of secret-looking options and URL credentials replaced by ***."""
    out = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        arg = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", arg)
        name, sep, _value = arg.partition("=")
        if sep and _SECRET_NAME.search(name):
            out.append(f"{name}={REDACTED}")
            continue
        if arg.startswith("-") and not sep and _SECRET_NAME.search(arg):
            hide_next = True  # "--password VALUE"
        out.append(arg)
    return out


def command_text(argv: list[str] | None, fallback: str = "") -> str:
    """The command shown and shipped with a process's rows: argv joined, secrets redacted,
    control characters replaced, at most COMMAND_MAX characters."""
    if not argv:
        return _CONTROL.sub("?", fallback)[:COMMAND_MAX]
    text = " ".join(redact_argv([a[:1024] for a in argv[:256]]))
    text = _CONTROL.sub("?", text)
    return text if len(text) <= COMMAND_MAX else text[: COMMAND_MAX - 1] + "…"
