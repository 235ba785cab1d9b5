"""README's Docker and systemd recipes, run as far as a machine without either allows.

Docker: README's deploy-store block runs as an ordinary host user; then README's `docker run`
line is taken apart and played as Docker would: a private mount namespace with its `-v`
mounts at their container paths (read-only where it says so), a private network namespace
(the health port is the image's own), the Dockerfile's ENV, ENTRYPOINT, USER (root when
there is none) and the users its `useradd` creates, and the `--user` and `--cap-*` of the
command line (a root entrypoint gets exactly the capabilities Docker would give it); the
Dockerfile's HEALTHCHECK command runs in the same network.
systemd: the shipped unit's ExecStart runs as its User= (root when there is none) within its
CapabilityBoundingSet, with the unit's environment, working directory, a credentials
directory, a notify socket and the agent's user README's `useradd` makes, as systemd would.

These need root (to switch users and mount); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_readme import command_lines, readme_blocks, run_line

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "deploy" / "agent-run.service"
BIN = Path(sys.executable).parent
HOST_UID = HOST_GID = 23456  # the operator's own uid on the host, in README's recipe
DEADLINE_S = 60.0
# What `docker run` grants a container by default (moby's default capability set).
DOCKER_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip


def _need_root_and_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the recipe runs as other users and mounts like Docker")
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs unshare and setpriv (util-linux)")
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create mount and network namespaces here: {probe.stderr!r}")


def _dockerfile() -> dict[str, list[str]]:
    """Dockerfile instructions by keyword, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def image_user() -> str:
    """The image's USER: its last USER instruction, root when it has none."""
    return _dockerfile().get("USER", ["0"])[-1]


def image_accounts() -> list[tuple[str, int]]:
    """The users the Dockerfile's RUN creates (`useradd ... --uid N ... NAME`), each with a
    group of its own (`--user-group`)."""
    accounts = []
    for command in re.findall(r"useradd ([^&;]*)", " ".join(_dockerfile().get("RUN", []))):
        words = shlex.split(command)
        accounts.append((words[-1], int(words[words.index("--uid") + 1])))
    return accounts


def user_database(accounts: list[tuple[str, int]]) -> list[str]:
    """Shell lines that give this mount namespace a /etc/passwd and /etc/group that also hold
    `accounts` (name, uid; a group of the same name and id), as a `useradd` in an image or on
    a server would; the host's files are untouched."""
    if not accounts:
        return []
    passwd = "".join(f"{n}:x:{u}:{u}::/nonexistent:/usr/sbin/nologin\n" for n, u in accounts)
    group = "".join(f"{n}:x:{u}:\n" for n, u in accounts)
    return [
        "mount -t tmpfs tmpfs /mnt",
        f"{{ cat /etc/passwd; printf %s {shlex.quote(passwd)}; }} > /mnt/passwd",
        f"{{ cat /etc/group; printf %s {shlex.quote(group)}; }} > /mnt/group",
        "mount --bind /mnt/passwd /etc/passwd",
        "mount --bind /mnt/group /etc/group",
        "umount -l /mnt",
    ]


def bounding_set(capabilities: list[str]) -> str:
    """setpriv's --bounding-set for exactly `capabilities` (a root process gets just these)."""
    return ",".join(["-all", *(f"+{cap.lower()}" for cap in capabilities)])


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _dockerfile()["ENV"]:
        env.update(item.split("=", 1) for item in shlex.split(instruction))
    return env


class DockerRun:
    """README's `docker run` line, taken apart."""

    def __init__(self, line: str, substitutions: dict[str, str]) -> None:
        for old, new in substitutions.items():
            line = line.replace(old, new)
        tokens = shlex.split(line)
        assert tokens[:2] == ["docker", "run"], tokens
        self.user: str | None = None
        self.mounts: list[tuple[str, str, bool]] = []  # source, target, read-only
        self.cap_drop: list[str] = []
        self.cap_add: list[str] = []
        self.env: dict[str, str] = {}
        index = 2
        while tokens[index].startswith("-"):
            flag = tokens[index]
            if flag == "--rm":
                index += 1
                continue
            value = tokens[index + 1]
            if flag in ("--user", "-u"):
                self.user = value
            elif flag in ("-v", "--volume"):
                source, target, *options = value.split(":")
                self.mounts.append((source, target, "ro" in options))
            elif flag in ("-e", "--env"):
                key, _, val = value.partition("=")
                self.env[key] = val
            elif flag in ("--cap-drop", "--cap-add"):
                getattr(self, flag[2:].replace("-", "_")).append(value.upper())
            elif flag not in ("-p", "--publish"):
                raise AssertionError(f"the test does not know docker run {flag}")
            index += 2
        self.image = tokens[index]
        self.args = tokens[index + 1 :]

    def capabilities(self) -> list[str]:
        """What a root entrypoint holds: Docker's default set, less --cap-drop, plus --cap-add."""
        kept = [] if "ALL" in self.cap_drop else list(DOCKER_CAPABILITIES)
        kept = [cap for cap in kept if cap not in self.cap_drop]
        return kept + [cap for cap in self.cap_add if cap not in kept]


def readme_docker_run(substitutions: dict[str, str]) -> DockerRun:
    lines = command_lines(readme_blocks()["docker"])
    (build,) = [line for line in lines if line.startswith("docker build")]
    (run,) = [line for line in lines if line.startswith("docker run")]
    docker = DockerRun(run, substitutions)
    assert f"-t {docker.image} ." in build, "docker run uses the image docker build made"
    return docker


def image_filesystem() -> list[str]:
    """Shell lines that give this mount namespace what an image has: an interpreter every
    uid can run. Here Python may live under a private directory (pyenv in /root, 0700): that
    directory is replaced, in this namespace only, by a 0755 tmpfs holding just the way in."""
    lines: list[str] = []
    opened: set[Path] = set()
    for path in (Path(os.path.realpath(sys.executable)), Path(sys.executable), ROOT):
        for parent in reversed(path.parents):
            if parent == Path("/") or parent.stat().st_mode & 0o001:
                continue
            if parent not in opened:
                opened.add(parent)
                child = parent / path.relative_to(parent).parts[0]
                lines += [
                    "mount -t tmpfs tmpfs /mnt",
                    "mkdir /mnt/keep",
                    f"mount --bind {shlex.quote(str(child))} /mnt/keep",
                    f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(parent))}",
                    f"mkdir {shlex.quote(str(child))}",
                    f"mount --move /mnt/keep {shlex.quote(str(child))}",
                    "umount /mnt",
                ]
            break
    return lines


def private_tmp() -> list[str]:
    """Shell lines that give this mount namespace a /tmp of its own, as every Docker
    container has: never the host's, never another container's. What the image needs from
    the host's /tmp (this checkout and its venv, when a CI clone lives there) is carried
    across at the same path: bound aside first, then moved onto the new tmpfs."""
    tmp = Path("/tmp")
    needed = (ROOT, BIN, Path(os.path.realpath(sys.executable)))
    keep = sorted(
        {tmp / p.relative_to(tmp).parts[0] for p in needed if p.parent.is_relative_to(tmp)}
    )
    lines = ["mount -t tmpfs tmpfs /mnt"] if keep else []
    for index, path in enumerate(keep):
        lines += [f"mkdir /mnt/{index}", f"mount --bind {shlex.quote(str(path))} /mnt/{index}"]
    lines.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
    for index, path in enumerate(keep):
        quoted = shlex.quote(str(path))
        lines += [f"mkdir {quoted}", f"mount --move /mnt/{index} {quoted}"]
    if keep:
        lines.append("umount /mnt")
    return lines


def as_user(
    uid: int,
    gid: int,
    network: bool = False,
    setup: list[str] | None = None,
    capabilities: list[str] | None = None,
) -> list[str]:
    """argv prefix: run the rest as uid:gid (no other groups; no capabilities, or exactly
    `capabilities` for root) in a private mount namespace with `image_filesystem()` and
    `setup` (and a private network with `network`)."""
    lines = ["set -e", *image_filesystem(), *(setup or [])]
    if network:
        lines.append("ip link set lo up")
    caps = "" if capabilities is None else f" --bounding-set={bounding_set(capabilities)}"
    switch = f'exec setpriv --reuid={uid} --regid={gid} --clear-groups{caps} -- "$@"'
    return [
        "unshare", "--mount", *(["--net"] if network else []), "--propagation", "private",
        "--", "sh", "-c", "\n".join([*lines, switch]), "sh",
    ]  # fmt: skip


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _container_script(docker: DockerRun, argv: list[str]) -> str:
    """Shell that sets up the container's mounts and network, then execs the entrypoint."""
    uid, _, gid = (docker.user or image_user()).partition(":")
    gid = gid or uid
    lines = ["set -e", "ip link set lo up", *image_filesystem()]
    # A private tmpfs where each mount point's directory would otherwise have to be created
    # on the host (/var/lib, /run): only this namespace sees it.
    covers = sorted({_nearest_existing(os.path.dirname(t)) for _, t, _ in docker.mounts}, key=len)
    lines += [f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(c)}" for c in covers]
    for source, target, read_only in docker.mounts:
        quoted = shlex.quote(target)
        lines.append(f"mkdir -p {shlex.quote(os.path.dirname(target))}")
        lines.append(f"mkdir -p {quoted}" if os.path.isdir(source) else f": > {quoted}")
        lines.append(f"mount --bind {shlex.quote(source)} {quoted}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {quoted}")
    lines += private_tmp()
    lines += user_database(image_accounts())
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/",
        **_image_env(),
        **docker.env,
    }
    caps = [f"--bounding-set={bounding_set(docker.capabilities())}"] if uid in ("0", "root") else []
    command = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *caps, "--",
        "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv,
    ]  # fmt: skip
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


class Container:
    """One emulated `docker run`: the entrypoint as PID of its own namespaces."""

    def __init__(self, docker: DockerRun) -> None:
        entrypoint = json.loads(_dockerfile()["ENTRYPOINT"][-1])
        self.docker = docker
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "--",
             "sh", "-c", _container_script(docker, [*entrypoint, *docker.args])],
            cwd=ROOT,  # the image's WORKDIR /app holds the same sample_agents/
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.stdout = b""
        self.stderr = b""

    def wait_output(self, pattern: str, stream: str = "stdout") -> str:
        """Read until `pattern` shows up in stdout or stderr (against a deadline)."""
        selector = selectors.DefaultSelector()
        assert self.process.stdout is not None and self.process.stderr is not None
        selector.register(self.process.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self.process.stderr, selectors.EVENT_READ, "stderr")
        deadline = time.monotonic() + DEADLINE_S
        try:
            while not re.search(pattern, getattr(self, stream).decode(errors="replace")):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"never saw {pattern!r}: {self.stdout!r} {self.stderr!r}"
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                    if not chunk:
                        selector.unregister(key.fileobj)
                        if not selector.get_map():
                            raise AssertionError(
                                f"the container ended before {pattern!r}: "
                                f"{self.stdout!r} {self.stderr!r}"
                            )
                    setattr(self, key.data, getattr(self, key.data) + chunk)
        finally:
            selector.close()
        return getattr(self, stream).decode(errors="replace")

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The Dockerfile's HEALTHCHECK command, run inside the container's network."""
        instruction = _dockerfile()["HEALTHCHECK"][-1]
        command = json.loads(instruction.split(" CMD ", 1)[1])
        if command[0] == "python":
            command[0] = sys.executable  # the image's python is the one agent-run runs on
        uid = (self.docker.user or image_user()).split(":")[0]
        return subprocess.run(
            ["nsenter", f"--target={self.process.pid}", "--net", "--mount", "--",
             "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *command],
            capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip

    def stop(self) -> int:
        """`docker stop`: SIGTERM once, then wait."""
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=DEADLINE_S)
        self.stdout += out
        self.stderr += err
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def host() -> Iterator[Path]:
    """The operator's working directory on the host: owned by them, reachable by others."""
    _need_root_and_namespaces()
    directory = Path(tempfile.mkdtemp(prefix="agent-run-recipe-", dir="/tmp"))
    directory.chmod(0o755)
    (directory / "home").mkdir()
    for path in (directory, directory / "home"):
        os.chown(path, HOST_UID, HOST_GID)
    yield directory
    shutil.rmtree(directory)


def make_deploy_store(host: Path) -> dict[str, str]:
    """README's deploy-store block, run by the operator (an ordinary user) on the host; the
    environment it leaves (its `export`s), for more of the operator's commands."""
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(host / "home"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    for line in command_lines(readme_blocks()["deploy-store"]):
        env = run_line(line, env, host, as_user(HOST_UID, HOST_GID))
    return env


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.close()


def _readme_run(host: Path, **overrides: Any) -> DockerRun:
    docker = readme_docker_run({"$PWD": str(host), "$(id -u):$(id -g)": f"{HOST_UID}:{HOST_GID}"})
    for name, value in overrides.items():
        setattr(docker, name, value)
    return docker


def test_each_emulated_container_has_its_own_tmp() -> None:
    """Like Docker's: a container sees neither the host's /tmp nor an earlier container's,
    and still runs this checkout (also when a CI clone of it lives under /tmp)."""
    _need_root_and_namespaces()
    on_host = Path(tempfile.mkdtemp(prefix="agent-run-host-", dir="/tmp"))
    probe = (
        "import os, launcher; os.mkdir('/tmp/agent-run'); "
        "print(repr((sorted(os.listdir('/tmp')), launcher.__file__)))"
    )
    kept = [line.split()[-1] for line in private_tmp() if line.startswith("mount --move")]
    try:
        for _ in range(2):  # the second would find the first one's /tmp/agent-run
            script = _container_script(DockerRun("docker run --rm image", {}), [
                str(BIN / "python"), "-c", probe,
            ])  # fmt: skip
            result = subprocess.run(
                ["unshare", "--mount", "--net", "--propagation", "private", "--",
                 "sh", "-c", script],
                cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            listing, module = ast.literal_eval(result.stdout)
            assert sorted(listing) == sorted(["agent-run", *(Path(k).name for k in kept)])
            assert on_host.name not in listing
            assert Path(module).is_relative_to(ROOT)
    finally:
        on_host.rmdir()


def test_docker_recipe_runs_the_agent_as_written(host: Path, containers: list[Container]) -> None:
    """README's deploy store and `docker run`: the agent gets the set, healthy, stops clean."""
    make_deploy_store(host)
    container = Container(_readme_run(host))
    containers.append(container)
    output = container.wait_output(r"secrets v1: .*\n")
    assert "secrets v1: DEMO_API_KEY" in output
    container.wait_output('"health_listening"', "stderr")
    check = container.healthcheck()
    assert check.returncode == 0, check.stderr
    assert container.stop() == 0
    assert "permission denied" not in container.stderr.decode()


def test_docker_worker_gets_its_own_secrets_and_nothing_else(
    host: Path, containers: list[Container]
) -> None:
    """In the default image, run as README says: the agent (uid 10001) reads its secrets and
    its file secret; the launcher's /proc environ and mem, the key, the store, another set and
    the control socket are all denied to it; its private files are gone after the stop."""
    env = make_deploy_store(host)
    (host / "sa.json").write_text('{"private_key": "file-own-0042"}')
    os.chown(host / "sa.json", HOST_UID, HOST_GID)
    for line in (
        "agent-run secrets set prod --file GOOGLE_APPLICATION_CREDENTIALS=sa.json",
        "agent-run secrets set other OTHER_KEY=sk-not-yours-0099",
    ):
        run_line(line, env, host, as_user(HOST_UID, HOST_GID))
    (host / "report").mkdir(mode=0o777)
    (host / "report").chmod(0o777)
    store, key = _image_env()["AGENT_RUN_HOME"], "/run/secrets/agent-run.key"
    control = _image_env()["AGENT_RUN_RUNTIME_DIR"]
    docker = _readme_run(host, args=["--secrets", "prod", "--", "python", "tests/agents/spy.py"])
    docker.mounts.append((str(host / "report"), "/report", False))
    tried = [store, f"{store}/prod.set", f"{store}/other.set", key, control, f"{control}/prod.sock"]
    docker.env.update(SPY_REPORT="/report/spy.json", SPY_TRY=os.pathsep.join(tried))
    container = Container(docker)
    containers.append(container)
    report_file = host / "report" / "spy.json"
    deadline = time.monotonic() + DEADLINE_S
    while not report_file.exists():
        assert container.process.poll() is None, container.process.communicate()
        assert time.monotonic() < deadline, "the spy never reported"
        time.sleep(0.05)
    report = json.loads(report_file.read_text())
    assert container.stop() == 0, container.stderr.decode()
    assert (report["uid"], report["gid"], report["groups"]) == (10001, 10001, [])
    assert report["env"]["DEMO_API_KEY"] == "sk-demo-123"
    assert "AGENT_RUN_MASTER_KEY" not in report["env"]
    path = report["env"]["GOOGLE_APPLICATION_CREDENTIALS"]
    assert report["files"]["GOOGLE_APPLICATION_CREDENTIALS"] == [
        'read:{"private_key": "file-own-0042"}',
        10001,
    ]
    routes: dict[str, str] = report["routes"]
    assert len(routes) == 2 + len(tried) and set(routes.values()) == {"denied"}, routes
    everything = json.dumps(report)
    assert "sk-not-yours-0099" not in everything
    assert (host / "agent-run.key").read_text().strip() not in everything
    assert not os.path.exists(path), "the file secret outlived its agent"
    assert not os.path.exists(os.path.dirname(os.path.dirname(path))), "the launcher's tree"


def test_docker_as_the_image_user_after_chown(host: Path, containers: list[Container]) -> None:
    """README's way where root is not allowed: `--user 10001` with the files given to that
    uid; AGENT_RUN_USER=agent then names the launcher's own user, and the agent runs."""
    make_deploy_store(host)
    uid = int(dict(image_accounts())["agent"])
    for path in [host / "deploy-store", *(host / "deploy-store").iterdir(), host / "agent-run.key"]:
        os.chown(path, uid, uid)  # sudo chown -R 10001:10001 deploy-store agent-run.key
    container = Container(_readme_run(host, user=f"{uid}:{uid}"))
    containers.append(container)
    assert "secrets v1: DEMO_API_KEY" in container.wait_output(r"secrets v1: .*\n")
    assert container.stop() == 0


def test_docker_with_the_wrong_uid_says_which_uid(host: Path, containers: list[Container]) -> None:
    """As the image's agent uid without the chown: exit 77 naming both uids and the fix."""
    make_deploy_store(host)
    container = Container(_readme_run(host, user="10001:10001"))
    containers.append(container)
    container.process.wait(timeout=DEADLINE_S)
    _, err = container.process.communicate()
    assert container.process.returncode == 77
    message = err.decode()
    assert "permission denied" in message and f"belongs to uid {HOST_UID}" in message
    assert f"--user {HOST_UID}" in message and "Traceback" not in message


def test_docker_as_another_user_says_how_to_unset_the_agent_user(
    host: Path, containers: list[Container]
) -> None:
    """The former recipe (`--user` the operator's uid) meets the image's AGENT_RUN_USER: one
    line, exit 77, naming the uid and how to unset it; nothing started."""
    make_deploy_store(host)
    container = Container(_readme_run(host, user=f"{HOST_UID}:{HOST_GID}"))
    containers.append(container)
    container.process.wait(timeout=DEADLINE_S)
    out, err = container.process.communicate()
    assert container.process.returncode == 77 and not out
    message = err.decode()
    assert message.count("\n") == 1 and f"uid {HOST_UID}" in message
    assert "AGENT_RUN_USER= (empty)" in message


def test_docker_healthcheck_fails_on_a_crash_loop(host: Path, containers: list[Container]) -> None:
    """A crash-looping agent turns the image's HEALTHCHECK red (503 from /healthz)."""
    make_deploy_store(host)
    crash = ["--secrets", "prod", "--max-restarts", "never", "--",
             "python", "-c", "raise SystemExit(3)"]  # fmt: skip
    container = Container(_readme_run(host, args=crash))
    containers.append(container)
    container.wait_output('"health_listening"', "stderr")
    container.wait_output('"worker_exited"', "stderr")
    check = container.healthcheck()
    assert check.returncode != 0
    assert "503" in check.stderr  # an HTTP answer, not a refused connection
    assert container.stop() == 0


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def test_systemd_unit_runs_the_agent_as_its_user(tmp_path: Path) -> None:
    """ExecStart as root within the unit's CapabilityBoundingSet, with its environment and
    credential: READY=1, every worker runs as `agent`, then a clean stop."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the unit runs as root and its agent as another user")
    unit = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if re.match(r"^[A-Z]\w*=", line)
    )
    root = Path(tempfile.mkdtemp(prefix="agent-run-unit-", dir="/tmp"))
    try:
        root.chmod(0o755)
        agent = HOST_UID + 1  # the agent's user README's useradd creates
        # README's install steps, into a private root: the agent, the store, the credential.
        places = {
            unit["WorkingDirectory"]: root / "srv",
            dict(v.split("=", 1) for v in shlex.split(unit["Environment"]))["AGENT_RUN_HOME"]: root
            / "store",
        }
        work, store = places.values()
        work.mkdir()
        shutil.copy(ROOT / "sample_agents" / "worker.py", work / "bot.py")  # root's, 0644
        key = tmp_path / "agent-run.key"
        subprocess.run(
            [BIN / "agent-run", "key", "init", "--key-file", key], check=True, capture_output=True
        )
        env = {**os.environ, "AGENT_RUN_HOME": str(store), "AGENT_RUN_KEY_FILE": str(key)}
        env.pop("AGENT_RUN_MASTER_KEY", None)
        subprocess.run(
            [BIN / "agent-run", "secrets", "set", "prod", "DEMO_API_KEY=sk-1"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        assert store.stat().st_uid == 0 and store.stat().st_mode & 0o077 == 0  # install -d -m 0700
        credentials = root / "credentials"
        credentials.mkdir(mode=0o500)  # systemd's, for a service that runs as root
        name = unit["LoadCredential"].split(":")[0]
        shutil.copy(key, credentials / name)
        (credentials / name).chmod(0o400)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify"))
        argv = shlex.split(unit["ExecStart"])
        assert argv[0] == "/usr/local/bin/agent-run"  # where README's install step links it
        argv[0] = str(BIN / "agent-run")
        service_env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "AGENT_RUN_HOME": str(store),
            "CREDENTIALS_DIRECTORY": str(credentials),
            "NOTIFY_SOCKET": str(root / "notify"),
        }
        capabilities = [cap.removeprefix("CAP_") for cap in unit["CapabilityBoundingSet"].split()]
        assert "User" not in unit  # root, as the unit says
        prefix = as_user(0, 0, setup=user_database([("agent", agent)]), capabilities=capabilities)
        process = subprocess.Popen(
            [*prefix, *argv], cwd=work, env=service_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            notify.settimeout(DEADLINE_S)
            messages = b""
            while b"READY=1" not in messages:
                messages += notify.recv(4096) + b"\n"
            assert b"STATUS=" in messages
            # unshare, sh and setpriv exec'd the launcher; its guardian is a fork of it
            workers = [
                pid
                for pid in _children(process.pid)
                if b"--secrets" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            uids = {_uid(pid) for pid in workers}
            process.send_signal(signal.SIGTERM)  # systemctl stop (KillMode=mixed)
            out, err = process.communicate(timeout=DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            notify.close()
        assert process.returncode == 0, err.decode()
        count = int(re.search(r"--workers (\d+)", unit["ExecStart"]).group(1))  # type: ignore[union-attr]
        assert len(workers) == count and uids == {agent}
        assert out.decode().count("secrets v1: DEMO_API_KEY") == count
    finally:
        shutil.rmtree(root)
