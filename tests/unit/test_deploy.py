# SPDX-License-Identifier: MIT
"""The deployment files (deploy/, vagrant/): each checked by a real validator, and each keeps the
privilege promises the README makes for it.

Validators (installed by scripts/setup.sh: apt, or the test extra: pip):
- systemd: `systemd-analyze verify` and `systemd-analyze security --offline=true` (Debian's
  systemd; no running systemd needed: the unit is verified inside a scratch --root that holds the
  distribution's own units and a stand-in for the agent's executable, which verify requires).
- Nomad: no Nomad binary can be installed from the registries (`go install
  github.com/hashicorp/nomad@v1.10.5` refuses the module's replace directives, and building it from
  the module zip fails: its `./api` replacement is not in the zip). So: python-hcl2 (an HCL2
  parser) plus the rules Nomad's own Job.Validate applies to a system job, checked here.
- Kubernetes: kubernetes-validate (the Kubernetes JSON schemas, offline), strict mode.
- Vagrant: `vagrant validate --ignore-provider` (Debian's vagrant; no provider can run here),
  `ruby -c`, shellcheck on the provisioning scripts.

A missing validator skips its test with the reason, except under CI (CI=true), where
scripts/setup.sh must have installed it: there it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "trackleak-agent.service"
AGENT_ENV = DEPLOY / "systemd" / "agent.env"
SECRETS_EXAMPLE = DEPLOY / "systemd" / "secrets.env.example"
NOMAD_JOB = DEPLOY / "nomad" / "trackleak-agent.nomad.hcl"
K8S = DEPLOY / "kubernetes" / "trackleak-agent.yaml"
VAGRANT = REPO / "vagrant"

# The capabilities the host agent needs, and why (README "Deploying the host agent").
CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}
# Only where the runtime cannot raise RLIMIT_MEMLOCK for it (kernels before 5.11).
CAPS_WITHOUT_MEMLOCK_LIMIT = CAPS | {"SYS_RESOURCE"}

ALL_FILES = [
    UNIT,
    AGENT_ENV,
    SECRETS_EXAMPLE,
    NOMAD_JOB,
    K8S,
    VAGRANT / "Vagrantfile",
    VAGRANT / "provision.sh",
    VAGRANT / "provision-lab.sh",
]


def need(tool: str) -> str:
    # console scripts of the test extra live beside this interpreter (.venv/bin), maybe not on PATH
    beside = Path(sys.executable).parent / tool
    path = str(beside) if beside.is_file() else shutil.which(tool)
    if path is None:
        why = f"{tool} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run this validator")
        pytest.skip(why)
    return path


def need_module(name: str):
    try:
        return __import__(name)
    except ImportError:
        why = f"Python module {name} is missing (pip install -e '.[test]' installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run this validator")
        pytest.skip(why)


def run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------------------------


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> values (in order) of a unit file; comments and section headers dropped."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory) -> Path:
    """A scratch root for `systemd-analyze --root`: the distribution's units (verify follows the
    unit's dependencies: sysinit.target, network-online.target...), the unit under test, and an
    executable where ExecStart points (verify refuses a missing one)."""
    root = tmp_path_factory.mktemp("sysroot")
    system = Path("/usr/lib/systemd/system")
    if not system.is_dir():
        pytest.skip("no /usr/lib/systemd/system on this machine")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    exe = unit_settings()["ExecStart"][0].split()[0]
    stand_in = root / exe.lstrip("/")
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    return root


def test_systemd_analyze_verify(systemd_root):
    tool = need("systemd-analyze")
    r = run(tool, "verify", f"--root={systemd_root}", UNIT.name)
    # verify exits 0 on unknown keys and bad values (it logs "ignoring"): any output is a finding.
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout


def test_systemd_verify_catches_mistakes(systemd_root, tmp_path):
    """The check above can fail: a misspelled key and a bad value are reported."""
    tool = need("systemd-analyze")
    bad = systemd_root / "etc/systemd/system/trackleak-bad.service"
    text = UNIT.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes")
    bad.write_text(text.replace("CPUQuota=50%", "CPUQuota=half"))
    r = run(tool, "verify", f"--root={systemd_root}", bad.name)
    assert "PrivateTemp" in r.stderr and "CPU quota" in r.stderr, r.stderr


def test_systemd_analyze_security(systemd_root):
    """`systemd-analyze security` scores the sandbox (0 safest, 10 most exposed); the unit must
    stay at or below 4.0 ("OK"): a setting dropped by accident raises the score."""
    tool = need("systemd-analyze")
    unit = systemd_root / "etc/systemd/system" / UNIT.name
    r = run(tool, "security", "--offline=true", "--threshold=40", f"--root={systemd_root}", str(unit))
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert r.returncode == 0 and score, r.stdout[-2000:] + r.stderr
    assert float(score.group(1)) <= 4.0


def test_systemd_unit_privileges():
    s = unit_settings()
    assert s["NoNewPrivileges"] == ["yes"]
    bounding = set(" ".join(s["CapabilityBoundingSet"]).split())
    assert bounding == {f"CAP_{c}" for c in CAPS}
    assert set(" ".join(s["AmbientCapabilities"]).split()) <= bounding
    assert "CAP_SYS_ADMIN" not in bounding and "CAP_DAC_OVERRIDE" not in bounding
    # CAP_SYS_RESOURCE is replaced by a limit systemd sets before the agent starts.
    assert s["LimitMEMLOCK"] == ["infinity"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == ["read-only"]
    assert s["PrivateTmp"] == ["yes"]
    # Settings that would break the agent (see the unit's comments) stay off.
    for key, broken in [
        ("ProtectKernelModules", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("PrivateUsers", "yes"),
    ]:
        assert broken not in s.get(key, []), key
    assert "bpf" in s["SystemCallFilter"][0] and "perf_event_open" in s["SystemCallFilter"][0]
    assert s["Restart"] == ["on-failure"]
    assert s["MemoryMax"] and s["CPUQuota"]
    assert s["StandardOutput"] == ["journal"] and s["StandardError"] == ["journal"]


def test_systemd_secrets_only_in_the_root_only_file():
    s = unit_settings()
    assert "/etc/trackleak/agent.env" in s["EnvironmentFile"]
    assert "-/etc/trackleak/secrets.env" in s["EnvironmentFile"]
    env = dict(
        line.split("=", 1) for line in AGENT_ENV.read_text().splitlines() if line and not line.startswith("#")
    )
    for name in (
        "ENABLE_ELASTICSEARCH",
        "ELASTICSEARCH_URL",
        "ELASTICSEARCH_INDEX",
        "ELASTICSEARCH_SSL_VERIFY",
        "ELASTICSEARCH_CA_FILE",
        "NOMAD_JOB_NAME",
        "TRACKLEAK_AGENT_ARGS",
    ):
        assert name in env, name
    assert not {"ELASTICSEARCH_API_KEY", "ELASTICSEARCH_PASSWORD"} & set(env)
    assert "install -m 0600" in SECRETS_EXAMPLE.read_text()


# --------------------------------------------------------------------------------------------
# Nomad
# --------------------------------------------------------------------------------------------


def _unquote(value):
    """python-hcl2 keeps string literals quoted ('"system"'): strip that, recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


def _labelled(blocks: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for block in blocks:
        out.update(block)
    return out


@pytest.fixture(scope="module")
def nomad_job() -> dict:
    hcl2 = need_module("hcl2")
    with NOMAD_JOB.open() as fh:
        doc = _unquote(hcl2.load(fh))  # raises on any HCL2 syntax error
    jobs = _labelled(doc["job"])
    assert list(jobs) == ["trackleak-agent"]
    return jobs["trackleak-agent"]


# The exec driver's task config schema (drivers/exec/driver.go, taskConfigSpec, Nomad 1.10).
EXEC_TASK_CONFIG = {"command", "args", "pid_mode", "ipc_mode", "cap_add", "cap_drop", "work_dir"}


def test_nomad_job_is_a_valid_system_job(nomad_job):
    """What Nomad's Job.Validate / TaskGroup.Validate require of a system job."""
    job = nomad_job
    assert job["type"] == "system"
    assert job["datacenters"] and all(job["datacenters"])
    assert " " not in "trackleak-agent"
    for forbidden in ("affinity", "spread", "reschedule"):
        assert forbidden not in job, f"system jobs may not have a {forbidden} block"
    groups = _labelled(job["group"])
    assert groups
    for group in groups.values():
        for forbidden in ("affinity", "spread", "reschedule"):
            assert forbidden not in group, f"system jobs may not have a {forbidden} block"
        assert int(group.get("count", 1)) == 1
        tasks = _labelled(group["task"])
        assert tasks
        for task in tasks.values():
            assert task["driver"] == "exec"
            (config,) = task["config"]
            assert set(config) <= EXEC_TASK_CONFIG, set(config) - EXEC_TASK_CONFIG
            assert config["command"].startswith("/")
            (resources,) = task["resources"]
            assert int(resources["memory"]) > 0 and int(resources["cpu"]) > 0
            for template in task.get("template", []):
                assert template["destination"].startswith("secrets/")


def test_nomad_job_privileges(nomad_job):
    task = _labelled(_labelled(nomad_job["group"])["agent"]["task"])["trackleak-agent"]
    (config,) = task["config"]
    assert config["pid_mode"] == "host"
    assert config["cap_drop"] == ["all"]
    assert {c.upper() for c in config["cap_add"]} == CAPS_WITHOUT_MEMLOCK_LIMIT
    assert task["user"] == "root"  # the agent's eBPF loader checks for uid 0


def test_nomad_credentials_come_from_nomad_variables(nomad_job):
    task = _labelled(_labelled(nomad_job["group"])["agent"]["task"])["trackleak-agent"]
    (env,) = task["env"]
    assert not {"ELASTICSEARCH_API_KEY", "ELASTICSEARCH_PASSWORD", "ELASTICSEARCH_USERNAME"} & set(env)
    rendered = [t for t in task["template"] if t.get("env") is True]
    assert len(rendered) == 1 and 'nomadVar "nomad/jobs/trackleak-agent"' in rendered[0]["data"]
    assert "ELASTICSEARCH_API_KEY={{ .api_key }}" in rendered[0]["data"]


def test_nomad_parser_rejects_broken_hcl(tmp_path):
    """The parse above can fail: an unclosed block is an error."""
    hcl2 = need_module("hcl2")
    broken = NOMAD_JOB.read_text().rstrip().rstrip("}")
    with pytest.raises(Exception):  # noqa: B017 - lark's parse errors; the class differs across versions
        hcl2.loads(broken)


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------

K8S_VERSIONS = ("1.30", "1.37")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate(version):
    need_module("kubernetes_validate")
    tool = need("kubernetes-validate")
    r = run(tool, "--strict", "-k", version, str(K8S))
    assert r.returncode == 0, r.stdout + r.stderr
    for kind in ("namespace/trackleak", "serviceaccount/trackleak-agent", "daemonset/trackleak-agent"):
        assert f"passed for resource {kind}" in r.stdout + r.stderr


def test_kubernetes_validate_catches_mistakes(tmp_path):
    tool = need("kubernetes-validate")
    bad = tmp_path / "bad.yaml"
    bad.write_text(K8S.read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    r = run(tool, "--strict", str(bad))
    assert r.returncode != 0 and "readOnlyRootFileSystem" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def daemonset() -> dict:
    yaml = need_module("yaml")
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "DaemonSet"]
    return docs[2]


def test_kubernetes_daemonset_privileges(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"operator": "Exists"} in pod["tolerations"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == CAPS_WITHOUT_MEMLOCK_LIMIT
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["memory"] and limits["cpu"] and requests["memory"] and requests["cpu"]


def test_kubernetes_host_mounts_are_read_only(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host.values()) == {
        "/lib/modules",
        "/usr/src",
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
    }
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    for name in host:
        assert mounts[name]["readOnly"] is True, name
    writable = {n for n, m in mounts.items() if not m.get("readOnly")}
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert writable <= emptydirs  # only scratch space is writable


def test_kubernetes_credentials_from_a_secret(daemonset):
    env = {e["name"]: e for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("ELASTICSEARCH_API_KEY", "ELASTICSEARCH_USERNAME", "ELASTICSEARCH_PASSWORD"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "trackleak-elasticsearch"


# --------------------------------------------------------------------------------------------
# Vagrant
# --------------------------------------------------------------------------------------------


def test_vagrant_validate(tmp_path):
    tool = need("vagrant")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    r = run(tool, "validate", "--ignore-provider", cwd=VAGRANT, env=env)
    assert r.returncode == 0 and "validated successfully" in r.stdout, r.stdout + r.stderr


def test_vagrantfile_ruby_syntax():
    tool = need("ruby")
    r = run(tool, "-c", str(VAGRANT / "Vagrantfile"))
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stdout + r.stderr


def test_vagrant_provisioning_shellcheck():
    tool = need("shellcheck")
    r = run(tool, "--severity=style", str(VAGRANT / "provision.sh"), str(VAGRANT / "provision-lab.sh"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_vagrant_uses_the_readme_setup():
    """The lab is set up by scripts/setup.sh and installs the agent from deploy/systemd: no copies."""
    assert "bash scripts/setup.sh" in (VAGRANT / "provision.sh").read_text()
    lab = (VAGRANT / "provision-lab.sh").read_text()
    assert "deploy/systemd/trackleak-agent.service" in lab
    # bcc and the kernel headers come from scripts/setup.sh, not from a second copy of its steps
    assert "linux-headers" not in lab and "bpfcc" not in lab


# --------------------------------------------------------------------------------------------
# No secret in any file
# --------------------------------------------------------------------------------------------

SECRET_ASSIGNMENT = re.compile(
    r"(ELASTICSEARCH_(?:PASSWORD|API_KEY)|api[-_]key|password)\s*[=:]\s*['\"]?([A-Za-z0-9+/=_\-]{8,})",
    re.IGNORECASE,
)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_literal(path):
    for match in SECRET_ASSIGNMENT.finditer(path.read_text()):
        value = match.group(2)
        # references and templates are fine: a Secret's key name, a Nomad template, a placeholder
        assert value in {"trackleak-elasticsearch", "secretKeyRef"} or "{{" in value, match.group(0)
    assert not re.search(r"\b(?:https?://)[^\s/:@]+:[^\s/@]+@", path.read_text()), "credentials in a URL"


def test_every_agent_flag_in_the_deployment_files_exists():
    # The files start the real `trackleak-agent`: a flag it does not know would stop the daemon at
    # start on every host. Compare what they pass with what its --help offers.
    exe = Path(sys.executable).parent / "trackleak-agent"
    res = run(str(exe), "--help", env={**os.environ, "COLUMNS": "200"})
    offered = set(re.findall(r"--[a-z][a-z-]+", res.stdout))
    assert "--ebpf-window" in offered, res.stdout
    used = set()
    for path in (AGENT_ENV, NOMAD_JOB, DEPLOY / "kubernetes" / "trackleak-agent.yaml"):
        text = path.read_text()
        if path == AGENT_ENV:
            text = "\n".join(line for line in text.splitlines() if line.startswith("TRACKLEAK_AGENT_ARGS="))
        elif path == NOMAD_JOB:
            text = "\n".join(line for line in text.splitlines() if "description" not in line)
        else:
            text = text[text.index("args:") :]
        used |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
    assert {"--interval", "--ebpf-window", "--ebpf-period"} <= used, sorted(used)
    assert used <= offered, f"flags trackleak-agent does not know: {sorted(used - offered)}"
