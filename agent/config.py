# SPDX-License-Identifier: MIT
"""The configuration of every command: defaults, the TOML file, and their order.

One order everywhere (`trackleak run`, `trackleak-agent --pid`, the host agent):

    command-line flag  >  environment variable  >  configuration file  >  default

The file is ``--config FILE``, else ``$TRACKLEAK_CONFIG``, else ``/etc/trackleak/trackleak.toml``
when it exists. Its keys are the long options without their dashes (``min-size`` or
``min_size``); top-level keys apply to every command, a ``[run]`` or ``[agent]`` table to that
command only (it wins over the top level), and ``[elasticsearch]`` gives the original
``ELASTICSEARCH_*`` variables (``url``, ``index``, ``api_key``, ``username``, ``password``,
``ssl_verify``, ``ca_file``, ``client_cert``, ``client_key``, ``job_name``, ``enabled``) for the
commands that ship, with the variables themselves still winning::

    sample_rate = 50
    min_size = 500

    [agent]
    interval = 5
    cmdline = ["gunicorn", "celery"]
    ebpf_window = 10
    ebpf_period = 60

    [elasticsearch]
    enabled = true
    url = "https://es.internal:9200"
    api_key_file = "/etc/trackleak/es-api-key"   # or api_key = "..." in a file only root reads

The CLI (cli/options.py) turns the file into click's ``default_map``, which click consults after
the flag and the environment variable: the order above is click's own, for every option. This
module checks the file (unknown keys and wrong types are errors naming the file and the key) and
holds the defaults that more than one command shares (``DEFAULTS``: the one place they are
written; the shim's own are in preload/src/config.c and tested equal).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError
from .sampling import DEFAULT_MIN_SIZE, DEFAULT_SAMPLE_RATE

ENV_CONFIG = "TRACKLEAK_CONFIG"
SYSTEM_CONFIG = Path("/etc/trackleak/trackleak.toml")

# Shared defaults (a command's own default, where it differs, is in COMMAND_DEFAULTS).
MAX_STACK_DEPTH = 128  # Python frames a call stack keeps at most (both routes)
DEFAULTS: dict[str, Any] = {
    "sample_rate": DEFAULT_SAMPLE_RATE,
    "min_size": DEFAULT_MIN_SIZE,
    "top": 20,
    "sort": "leak",
    "interval": 1.0,
    "stack_depth": 32,
}
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {},
    "agent": {},  # with --pid
    "host": {"interval": 5.0, "ebpf_window": 10.0, "ebpf_period": 60.0, "es_ship": "all"},
}


def default(name: str, command: str = "run") -> Any:
    """The default of option NAME for COMMAND ("run", "agent" with --pid, "host")."""
    return COMMAND_DEFAULTS.get(command, {}).get(name, DEFAULTS.get(name))


# What the file may say: key -> type ("int", "float", "str", "bool", "list"). Keys are parameter
# names (click's), which are the long options with "_" for "-"; --json is json_path.
_COMMON = {
    "sample_rate": "int",
    "sample_bytes": "int",
    "min_size": "int",
    "interval": "float",
    "top": "int",
    "sort": "str",
    "live": "bool",
    "quiet": "bool",
    "json_path": "str",
    "stack_depth": "int",
}
KEYS: dict[str, dict[str, str]] = {
    "run": {
        **_COMMON,
        "python": "str",
        "dump_interval": "int",
        "small_objects": "str",
        "startup_delay": "int",
        "log_dir": "str",
        "verbose": "bool",
    },
    "agent": {
        **_COMMON,
        "duration": "float",
        "python": "bool",  # --python/--native-only
        "arenas": "bool",
        "once": "bool",
        "name": "list",
        "cmdline": "list",
        "user": "list",
        "cgroup": "list",
        "exclude_name": "list",
        "exclude_cmdline": "list",
        "exclude_user": "list",
        "exclude_cgroup": "list",
        "any_process": "bool",
        "ebpf_window": "float",
        "ebpf_period": "float",
        "ebpf": "bool",
        "host_name": "str",
        "es_ship": "str",
    },
}
ALIASES = {"json": "json_path"}
# [elasticsearch] key -> the original variable it stands for.
ES_KEYS = {
    "enabled": "ENABLE_ELASTICSEARCH",
    "url": "ELASTICSEARCH_URL",
    "index": "ELASTICSEARCH_INDEX",
    "username": "ELASTICSEARCH_USERNAME",
    "password": "ELASTICSEARCH_PASSWORD",
    "api_key": "ELASTICSEARCH_API_KEY",
    "ssl_verify": "ELASTICSEARCH_SSL_VERIFY",
    "ca_file": "ELASTICSEARCH_CA_FILE",
    "client_cert": "ELASTICSEARCH_CLIENT_CERT",
    "client_key": "ELASTICSEARCH_CLIENT_KEY",
    "job_name": "NOMAD_JOB_NAME",
}
ES_FILE_KEYS = {"password_file": "password", "api_key_file": "api_key"}
SECRET_KEYS = ("password", "api_key")
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, str)}
_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list": "a string or a list of strings",
}


@dataclass
class Config:
    """A loaded configuration file (empty when there is none)."""

    path: Path | None = None
    common: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    es: dict[str, str] = field(default_factory=dict)  # original variable -> value
    notes: list[str] = field(default_factory=list)  # said once by the command (e.g. permissions)

    def default_map(self, command: str) -> dict[str, Any]:
        """click's default_map for COMMAND ("run" or "agent"): the top level, then its table."""
        out = {k: v for k, v in self.common.items() if k in KEYS[command]}
        out.update(self.sections.get(command, {}))
        return out

    def es_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """ENVIRON with the file's [elasticsearch] values under the variables it does not set."""
        return {**self.es, **environ}


def find(explicit: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """Which file: --config, else $TRACKLEAK_CONFIG, else the system file when it exists."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG]).expanduser()
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load(path: Path | None) -> Config:
    """Read and check PATH (None: no file). UserError naming the file and the key otherwise."""
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist (--config or ${ENV_CONFIG})") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        doc = _toml().loads(text)
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    cfg = Config(path=path)
    for key, value in doc.items():
        if isinstance(value, dict):
            if key in KEYS:
                cfg.sections[key] = {
                    name: _check(path, f"[{key}] ", name, v, KEYS[key]) for name, v in _named(value)
                }
            elif key == "elasticsearch":
                _load_es(cfg, path, value)
            else:
                raise UserError(
                    f"config file {path}: unknown table [{key}] (known: [run], [agent], [elasticsearch])"
                )
            continue
        name = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        types = {**KEYS["run"], **KEYS["agent"]}
        if name == "python":
            raise UserError(
                f"config file {path}: 'python' means two things: put it in [run] (the interpreter) "
                "or in [agent] (true or false: walk Python frames)"
            )
        if name not in types:
            raise UserError(f"config file {path}: unknown key '{key}' (known: {', '.join(sorted(types))})")
        cfg.common[name] = _check(path, "", name, value, types)
    return cfg


def _named(table: Mapping[str, Any]):
    for key, value in table.items():
        yield ALIASES.get(key.replace("-", "_"), key.replace("-", "_")), value


def _check(path: Path, where: str, name: str, value: Any, types: Mapping[str, str]) -> Any:
    kind = types.get(name)
    if kind is None:
        raise UserError(
            f"config file {path}: unknown key {where}'{name}' (known: {', '.join(sorted(types))})"
        )
    ok = isinstance(value, _TYPES[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
    if kind == "list" and isinstance(value, list):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise UserError(
            f"config file {path}: {where}'{name}' must be {_TYPE_WORDS[kind]}, not {type(value).__name__}"
        )
    if kind == "list" and isinstance(value, str):
        return [value]
    if kind == "float":
        return float(value)
    return value


def _load_es(cfg: Config, path: Path, table: Mapping[str, Any]) -> None:
    secret = False
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in ES_FILE_KEYS:  # the secret in its own file (key files are one line)
            if not isinstance(value, str):
                raise UserError(f"config file {path}: [elasticsearch] '{name}' must be a file name")
            try:
                value = Path(value).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                why = exc.strerror or exc
                raise UserError(
                    f"config file {path}: [elasticsearch] '{name}': cannot read {value}: {why}"
                ) from None
            name = ES_FILE_KEYS[name]
        if name not in ES_KEYS:
            known = ", ".join(sorted([*ES_KEYS, *ES_FILE_KEYS]))
            raise UserError(f"config file {path}: unknown key [elasticsearch] '{key}' (known: {known})")
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise UserError(f"config file {path}: [elasticsearch] '{name}' must be a string")
        secret = secret or (name in SECRET_KEYS and "_file" not in key)
        cfg.es[ES_KEYS[name]] = value
    if secret and _readable_by_others(path):
        cfg.notes.append(
            f"config file {path} holds an Elasticsearch secret and others can read it: "
            f"chmod 600 {path} (or use password_file / api_key_file)"
        )


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # the package's dependency below 3.11

    return tomli
