"""The deployment files (Dockerfile, systemd unit, Kubernetes manifest) keep their promises."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "deploy" / "agent-run.service"
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
AGENT_DOCKERFILE = ROOT / "deploy" / "Dockerfile.agent"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the test extra)")
    return found


def _instructions() -> dict[str, list[str]]:
    """Dockerfile instructions by keyword, continuation lines joined."""
    # Comment lines may sit inside a continued instruction; Docker drops them first.
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, AGENT_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    """hadolint, the Dockerfile linter, has nothing to say (the image and the agent on it)."""
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_dockerfile_builds_on_the_image_readme_builds() -> None:
    """deploy/Dockerfile.agent starts FROM the tag README's `docker build -t` gives the image,
    and keeps its users: the launcher root, the agent AGENT_RUN_USER (no USER, no override)."""
    text = AGENT_DOCKERFILE.read_text()
    base = re.search(r"^ARG AGENT_RUN_IMAGE=(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text()
    assert f"docker build -t {base} ." in readme
    code = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert not re.search(r"^USER ", code, re.M) and "AGENT_RUN_USER" not in code


def test_dockerfile_promises() -> None:
    """agent-run is the ENTRYPOINT, a sample agent the CMD, SIGTERM, a HEALTHCHECK."""
    found = _instructions()
    assert json.loads(found["ENTRYPOINT"][-1]) == ["agent-run"]
    cmd = json.loads(found["CMD"][-1])
    assert (ROOT / cmd[-1]).is_file(), f"CMD names a missing sample agent: {cmd}"
    assert found["STOPSIGNAL"] == ["SIGTERM"]
    assert "/healthz" in found["HEALTHCHECK"][-1]
    assert any("AGENT_RUN_HEALTH=0.0.0.0:8099" in env for env in found["ENV"])


def test_dockerfile_runs_the_agent_as_another_user() -> None:
    """The launcher is root (no USER), its agent `agent` (uid 10001, AGENT_RUN_USER), the
    store directory root's own (0700)."""
    found = _instructions()
    assert "USER" not in found
    assert any(re.search(r"\bAGENT_RUN_USER=agent\b", env) for env in found["ENV"])
    run = " ".join(found["RUN"])
    assert re.search(r"useradd [^&]*--uid 10001 [^&]*\bagent\b", run)
    store = re.search(r"install -d ([^&]*)/var/lib/agent-run", run).group(1)  # type: ignore[union-attr]
    assert "-m 0700" in store and "-o" not in store


def test_systemd_unit_verifies() -> None:
    """`systemd-analyze verify` accepts the unit (with ExecStart pointed at this install)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    installed = Path(sys.executable).parent / "agent-run"
    text = UNIT.read_text().replace("/usr/local/bin/agent-run", str(installed))
    # The example's service user need not exist on a test machine.
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    unit = ROOT / ".pytest_cache" / "agent-run-verify.service"
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_promises() -> None:
    """notify type, reload by SIGHUP, key as a credential, stop timeout covers the drain."""
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )
    assert settings["Type"] == "notify"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["LoadCredential"].startswith("agent-run.key:")
    assert settings["KillMode"] == "mixed"  # TERM to the launcher only, never the whole group
    drain = int(re.search(r"--drain-timeout (\d+)", settings["ExecStart"]).group(1))  # type: ignore[union-attr]
    assert int(settings["TimeoutStopSec"]) > drain
    assert int(settings["WatchdogSec"]) > 0


def test_systemd_unit_runs_the_agent_as_another_user() -> None:
    """The launcher root (no User=), bounded to the capabilities it needs; workers --user agent."""
    from launcher.privilege import CAPABILITIES

    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )
    assert "User" not in settings and "Group" not in settings
    assert " --user agent " in settings["ExecStart"]
    bounding = settings["CapabilityBoundingSet"].split()
    assert sorted(bounding) == sorted(f"CAP_{cap}" for cap in CAPABILITIES)
    assert settings["NoNewPrivileges"] == "yes"


def test_kubernetes_runs_the_agent_as_another_user() -> None:
    """Root with only the capabilities it needs, no privilege escalation; the agent as
    `agent`; store and key root's alone (0400)."""
    from launcher.privilege import CAPABILITIES

    yaml = pytest.importorskip("yaml")
    deployment = yaml.safe_load(MANIFEST.read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsUser"] == 0 and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert sorted(context["capabilities"]["add"]) == sorted(CAPABILITIES)
    assert {"name": "AGENT_RUN_USER", "value": "agent"} in container["env"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["store"]["configMap"]["defaultMode"] == 0o400
    assert volumes["master-key"]["secret"]["defaultMode"] == 0o400


def test_kubernetes_manifest_validates() -> None:
    """The manifest is a valid Deployment for the Kubernetes API (strict schema check)."""
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", str(MANIFEST)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_grace_period_covers_the_drain() -> None:
    """terminationGracePeriodSeconds exceeds the drain timeout; probes hit real endpoints."""
    text = MANIFEST.read_text()
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", text).group(1))  # type: ignore[union-attr]
    drain = int(
        re.search(r'AGENT_RUN_DRAIN_TIMEOUT\s+value: "(\d+)"', text).group(1)  # type: ignore[union-attr]
    )
    assert grace > drain
    assert "path: /readyz" in text and "path: /healthz" in text
    assert "readOnly: true" in text  # the sealed store is mounted read-only


def test_default_ports_stay_clear_of_livekit_and_pipecat() -> None:
    """No default port of ours (image health, k8s probe port, session API) is 8081 (LiveKit worker), 7860 (Pipecat runner) or 8080 (Pipecat Cloud)."""
    from launcher.config import HEALTH_PORT, SESSION_API

    theirs = {8081, 7860, 8080}
    found = _instructions()
    ours = {HEALTH_PORT, int(SESSION_API.rsplit(":", 1)[1])}
    ours |= {int(port) for port in found["EXPOSE"][-1].split()}
    ours |= {
        int(m) for env in found["ENV"] for m in re.findall(r"AGENT_RUN_HEALTH=[\d.]+:(\d+)", env)
    }
    ours |= {int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)", found["HEALTHCHECK"][-1])}
    manifest = (ROOT / "deploy" / "kubernetes.yaml").read_text()
    ours |= {int(m) for m in re.findall(r"containerPort: (\d+)", manifest)}
    ours |= {int(m) for m in re.findall(r"AGENT_RUN_HEALTH\n\s+value: [\d.]+:(\d+)", manifest)}
    assert HEALTH_PORT in ours and not ours & theirs, ours
