"""A private Docker engine for the tests, and the project's image built on it without a registry.

    python -m tests.support.docker_engine build            # both variants, by hand (prints their names)
    python -m tests.support.docker_engine start            # an engine in the foreground: DOCKER_HOST to use

    name = built_image(folder)                 # "openanalytics:test" from the work tree (the slim image)
    name = built_image(folder, embedded=True)  # "openanalytics:test-embedded" (--build-arg EXTRAS=embedded)
    docker = engine(folder)                    # the engine those images live in (one per process)
    container = docker.start_container(name, "serve", env={...})   # uid 10001, read-only root, host network
    docker.run_once(name, "standalone")        # the same in the foreground: a CompletedProcess

The engine is Debian's dockerd (package docker.io), started as a child process of ours that
leaves the host's networking alone: no bridge, no iptables rules, no IP forwarding or
masquerading; containers share the host's network (`--network host`), so a test reaches them
on 127.0.0.1. It has its own data root, runtime folder, socket and configuration, and stops
when this process exits (atexit) or dies (PR_SET_PDEATHSIG).

No registry serves the Dockerfile's base images here, so stand-ins are built under their exact
names: a Debian bookworm root from `debootstrap --variant=minbase` on the machine's own apt
mirror, the packages each image needs installed inside it (python3 with venv and `python`; nodejs
and npm), then `docker import`. The node stand-in has Debian's Node.js 18 under the name
node:20; the Dockerfile only runs npm in it. The stand-ins trust the machine's own extra
certificate authorities (/usr/local/share/ca-certificates), as the machine does.

Kept in OA_IMAGE_CACHE (default ~/.cache/openanalytics/image): the stand-ins' root tarballs and
the engine's data root, with its build cache, so that a second run rebuilds only what changed.
One dockerd runs on the cached data root: the first process to need it starts it, others (other
pytest-xdist workers, other test runs) use it as clients, and the first keeps it up at its exit
until they are done (flocks in the cache folder); builds take turns. Needs root; Debian's
docker.io and debootstrap are installed when missing where apt-get exists (scripts/test does it
before pytest).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import ChildServer, ServerUnavailable, _apt_install, _open_servers

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("OA_IMAGE_CACHE") or Path.home() / ".cache" / "openanalytics" / "image")
DOCKERD = Path("/usr/sbin/dockerd")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
SUITE = "bookworm"
IMAGE = "openanalytics:test"
EMBEDDED_IMAGE = "openanalytics:test-embedded"
USER = "10001:10001"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineUnavailable(ServerUnavailable):
    """dockerd cannot run here, or what it needs cannot be installed."""


@dataclass(frozen=True)
class StandIn:
    """How to make a base image that cannot be pulled: Debian packages on a minbase root."""

    packages: tuple[str, ...]
    env: tuple[str, ...] = ("PATH=" + PATH, "LANG=C.UTF-8")
    cmd: str = "bash"

    def key(self) -> str:
        recipe = json.dumps([_RECIPE_VERSION, SUITE, self.packages, self.env, self.cmd])
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]


_RECIPE_VERSION = 1  # bump to rebuild every stand-in
STAND_INS = {
    "docker.io/library/python:3.11-slim-bookworm": StandIn(("python3", "python3-venv", "python-is-python3")),
    "docker.io/library/node:20-bookworm-slim": StandIn(("nodejs", "npm"), cmd="node"),
}
# What the official slim images leave out (docs, manuals, translations); dpkg skips them.
_SLIM = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
         "/usr/share/lintian/*", "/usr/share/linda/*")


# Prerequisites ---------------------------------------------------------------------------------

def blocker() -> str | None:
    """Why no engine can run (or be installed) here, or None."""
    if sys.platform != "linux":
        return "the private Docker engine runs on Linux only"
    if os.geteuid() != 0:
        return "the private Docker engine (dockerd) and debootstrap need root"
    if shutil.which("apt-get") is None and not (DOCKERD.is_file() and DEBOOTSTRAP.is_file() and _docker_cli()):
        return "Debian's docker.io and debootstrap are missing and there is no apt-get to install them"
    return None


def install_missing() -> None:
    """Debian's docker.io (dockerd, containerd, runc, the client) and debootstrap, where missing."""
    reason = blocker()
    if reason:
        raise EngineUnavailable(reason)
    if not (DOCKERD.is_file() and _docker_cli()):
        _apt_install("docker.io", "the private Docker engine (dockerd)", lambda: DOCKERD.is_file())
    if not DEBOOTSTRAP.is_file():
        _apt_install("debootstrap", "the base images' stand-ins (debootstrap)", DEBOOTSTRAP.is_file)


def _docker_cli() -> str | None:
    """Debian's client beside Debian's dockerd where there is one, else the first on PATH."""
    debian = Path("/usr/bin/docker")
    return str(debian) if debian.is_file() else shutil.which("docker")


# The engine ------------------------------------------------------------------------------------

class DockerEngine(ChildServer):
    """dockerd on a unix socket of its own; `port` is unused (0)."""

    name = "dockerd"
    log_name = "dockerd.log"
    ready_timeout = 60.0
    stop_timeout = 60.0
    death_signal = signal.SIGTERM  # dockerd then stops its containers and containerd

    def __init__(self, folder: Path, data_root: Path, *, owned: bool = True):
        super().__init__(folder, 0)
        self.data_root = Path(data_root)
        self.owned = owned  # False: another process's dockerd on the same data root, used as a client
        # A short runtime folder (unix socket paths are limited to 108 bytes), one per data root.
        tag = hashlib.sha256(str(self.data_root.resolve()).encode()).hexdigest()[:10]
        self.exec_root = Path(f"/run/oa-dockerd-{tag}")
        self.socket = self.exec_root / "docker.sock"
        self.config = self.folder / "daemon.json"
        self.client_config = self.folder / "client"
        self.client_config.mkdir(exist_ok=True)

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def command(self, port: int) -> list[str]:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
        return [str(DOCKERD), "--config-file", str(self.config), "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "--pidfile", str(self.data_root.parent / "dockerd.pid"),
                "-H", self.host, "--group", "root",
                "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--ip-masq=false", "--userland-proxy=false",
                # Apart from any containerd of the machine's, should dockerd find one.
                "--containerd-namespace", "openanalytics-tests", "--containerd-plugins-namespace",
                "openanalytics-tests-plugins", "--log-level", "warn"]

    def answers(self, process: subprocess.Popen, port: int) -> bool:
        return process.poll() is None and _ping(self.socket)

    @property
    def running(self) -> bool:
        return super().running if self.owned else _ping(self.socket)

    def attach(self, timeout: float = 60) -> bool:
        """Whether the other process's dockerd answers (it may be starting still) within `timeout`."""
        deadline = time.monotonic() + timeout
        while not _ping(self.socket):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def docker(self, *args: str, timeout: float = 120, check: bool = True, **options) -> subprocess.CompletedProcess:
        """The docker client against this engine; output as text."""
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.client_config),
               "DOCKER_BUILDKIT": "0", **options.pop("env", {})}
        done = subprocess.run([_docker_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **options)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def image_size(self, name: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", name).stdout)

    # Containers, run as the chart runs them: uid 10001, read-only root, no capabilities, and on the
    # host's network (there is no bridge): a server in one listens on the host's 127.0.0.1.
    def _run_args(self, image: str, command: tuple[str, ...], env: dict[str, str] | None,
                  options: tuple[str, ...], user: str | None) -> list[str]:
        environment = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        as_user = ["--user", user] if user else []
        return ["--network", "host", *as_user, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--label", f"openanalytics.tests={os.getpid()}",
                *environment, *options, image, *command]

    def start_container(self, image: str, *command: str, env: dict[str, str] | None = None,
                        options: tuple[str, ...] = (), user: str | None = USER) -> Container:
        """A container in the background (removed with the engine, or by Container.remove());
        `user=None` runs it as the image's own user."""
        done = self.docker("run", "-d", *self._run_args(image, command, env, options, user))
        return Container(self, done.stdout.strip())

    def run_once(self, image: str, *command: str, env: dict[str, str] | None = None,
                 options: tuple[str, ...] = (), user: str | None = USER,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        """A container in the foreground, removed when done: its exit code and output."""
        return self.docker("run", "--rm", *self._run_args(image, command, env, options, user), timeout=timeout,
                           check=False)

    def remove_containers(self, *, mine_only: bool = False) -> None:
        label = f"openanalytics.tests={os.getpid()}" if mine_only else "openanalytics.tests"
        ids = self.docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)

    def stop(self) -> None:
        if not self.owned:
            return
        if self.running:  # without waiting for the containers' own shutdown (10 s each)
            with contextlib.suppress(Exception):
                self.remove_containers()
        super().stop()

    def close(self) -> None:
        """Stop dockerd and remove its runtime folder (the data root stays): dockerd leaves a bind
        mount of the host's network namespace there (netns/default), unmounted first. An attached
        engine only forgets the other process's."""
        if not self.owned:
            with contextlib.suppress(Exception):
                self.remove_containers(mine_only=True)
            _open_servers.discard(self)
            return
        super().close()
        if not self.running:
            for point in sorted(_mounts_under(self.exec_root), key=len, reverse=True):
                subprocess.run(["umount", point], capture_output=True)
            with contextlib.suppress(RuntimeError):
                _remove_tree(self.exec_root)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DockerEngine {self.host} {state}, data root {self.data_root}>"


@dataclass
class Container:
    engine: DockerEngine
    id: str

    def logs(self) -> str:
        done = self.engine.docker("logs", self.id, check=False)
        return done.stdout + done.stderr

    @property
    def running(self) -> bool:
        done = self.engine.docker("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return done.stdout.strip() == "true"

    def remove(self) -> None:
        self.engine.docker("rm", "-f", self.id, check=False)


def _ping(path: Path) -> bool:
    """GET /_ping on dockerd's socket."""
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(path))

    connection = UnixConnection("localhost", timeout=2)
    try:
        connection.request("GET", "/_ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


_engine: DockerEngine | None = None
_owner_lock = None  # exclusive flock on CACHE/engine.lock: this process runs the dockerd on the cached root
_users_lock = None  # shared flock on CACHE/engine-users.lock while this process uses that dockerd
_throwaway_roots: list[Path] = []
_built: dict[bool, str] = {}
GUESTS_TIMEOUT = 900.0  # how long an owner, at its exit, waits for the processes still using its engine


def engine(folder: Path) -> DockerEngine:
    """This process's engine (`folder` takes its log): the dockerd on the cached data root, started
    here, or the one another process (a pytest-xdist worker, another test run) started there, used
    while it runs; that process keeps it up until the last one using it exits."""
    global _engine, _owner_lock, _users_lock
    if _engine is not None and _engine.running:
        return _engine
    install_missing()
    folder = Path(folder)
    CACHE.mkdir(parents=True, exist_ok=True)
    data_root = CACHE / "data-root"
    if _users_lock is None:
        _users_lock = open(CACHE / "engine-users.lock", "w")
        fcntl.flock(_users_lock, fcntl.LOCK_SH)  # waits only while an owner shuts its engine down
    if _owner_lock is None:
        lock = open(CACHE / "engine.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _owner_lock = lock
        except BlockingIOError:
            lock.close()
    if _owner_lock is not None:
        started = DockerEngine(folder, data_root)
    else:
        started = DockerEngine(folder, data_root, owned=False)
        if not started.attach():
            print(f"the engine on {data_root} does not answer: a throwaway data root (everything is built "
                  "again)", file=sys.stderr)
            started.close()
            data_root = Path(tempfile.mkdtemp(prefix="docker-", dir=folder))
            _throwaway_roots.append(data_root)
            started = DockerEngine(folder, data_root)
    if started.owned:
        try:
            started.start()
        except BaseException:
            started.close()
            raise
        started.docker("container", "prune", "-f", "--filter", "label=openanalytics.tests", check=False)
    _engine = started
    return started


@atexit.register
def _stop_engine() -> None:
    """Owner: once no other process uses the engine (or after GUESTS_TIMEOUT), what earlier builds
    left untagged is pruned (no build is under way then) and dockerd stops."""
    global _engine, _owner_lock, _users_lock
    docker, _engine = _engine, None
    if docker is not None and docker.owned and docker.data_root == CACHE / "data-root" and _users_lock:
        deadline, said = time.monotonic() + GUESTS_TIMEOUT, False
        while True:
            try:
                fcntl.flock(_users_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    print(f"waiting for the processes still using the Docker engine on {docker.data_root}",
                          file=sys.stderr)
                    said = True
                if time.monotonic() > deadline:
                    print("processes still use the Docker engine; stopping it all the same", file=sys.stderr)
                    break
                time.sleep(0.5)
    if docker is not None:
        with contextlib.suppress(Exception):
            if docker.owned and docker.running:
                docker.docker("image", "prune", "-f", check=False, timeout=300)
        with contextlib.suppress(Exception):
            docker.close()
    for lock in (_owner_lock, _users_lock):
        if lock is not None:
            lock.close()  # releases its flock
    _owner_lock = _users_lock = None
    for root in _throwaway_roots:
        with contextlib.suppress(RuntimeError):
            _remove_tree(root)


# Stand-ins for the base images -----------------------------------------------------------------

def _from_lines() -> list[tuple[str, str | None]]:
    """(image, stage name) of each of the Dockerfile's FROM lines."""
    found = (re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
             for line in (ROOT / "Dockerfile").read_text().splitlines())
    return [(match[1], match[2].lower() if match[2] else None) for match in found if match]


def base_images() -> list[str]:
    """The images the Dockerfile's FROM lines pull (not its own stages)."""
    stages = {stage for _, stage in _from_lines() if stage}
    images: list[str] = []
    for name, _ in _from_lines():
        if name.lower() not in stages and name not in images:
            images.append(name)
    return images


def ensure_base_images(docker: DockerEngine, log=sys.stderr) -> None:
    """Every base image the Dockerfile names, imported into the engine as a stand-in (built once)."""
    for name in base_images():
        if name not in STAND_INS:
            raise RuntimeError(f"the Dockerfile's base image {name} has no stand-in in {__file__} (STAND_INS)")
        stand_in = STAND_INS[name]
        message = f"openanalytics stand-in {stand_in.key()}"
        current = docker.docker("image", "inspect", "--format", "{{.Comment}}", name, check=False)
        if current.returncode == 0 and current.stdout.strip() == message:
            continue
        tarball = _stand_in_tarball(name, stand_in, log)
        changes = [arg for env in stand_in.env for arg in ("--change", f"ENV {env}")]
        docker.docker("import", *changes, "--change", f'CMD ["{stand_in.cmd}"]', "--message", message,
                      str(tarball), name, timeout=600)


def _stand_in_tarball(name: str, stand_in: StandIn, log) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removeprefix("docker.io/library/"))
    tarball = CACHE / "bases" / f"{safe}-{stand_in.key()}.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "bases.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the second finds it done
        if tarball.is_file():
            return tarball
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="stand-in-", dir=tarball.parent))
        try:
            root = work / "root"
            _unpack_minbase(root, log)
            _install_into(root, stand_in.packages)
            partial = work / "root.tar"
            # Device nodes stay out: the engine gives every container a /dev of its own.
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                            "--exclude=./sys/*", "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
        finally:
            _remove_tree(work)
        print(f"built the stand-in for {name} in {time.monotonic() - started:.0f} s "
              f"({tarball.stat().st_size / 1e6:.0f} MB)", file=log)
    return tarball


def _unpack_minbase(root: Path, log) -> None:
    """A bookworm minbase root, from the cached tarball (debootstrap made it the first time)."""
    minbase = CACHE / "bases" / f"debian-{SUITE}-minbase-{_RECIPE_VERSION}.tar"
    if not minbase.is_file():
        started = time.monotonic()
        fresh = root.parent / "minbase"
        mirror, _ = _mirrors()
        # In a mount namespace of its own: what debootstrap mounts in the root (proc, sys, maybe /dev)
        # never shows on the host, and is gone with it even if it is killed.
        done = subprocess.run(["unshare", "--mount", "--fork", str(DEBOOTSTRAP), "--variant=minbase",
                               "--include=ca-certificates", SUITE, str(fresh), mirror],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        partial = minbase.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(fresh), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(minbase)
        _remove_tree(fresh)
        print(f"debootstrap {SUITE} minbase from {mirror} in {time.monotonic() - started:.0f} s", file=log)
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(minbase)], check=True)


def _install_into(root: Path, packages: tuple[str, ...]) -> None:
    """apt-get install in the root (its own mount and pid namespaces: nothing is mounted on the host),
    with the machine's mirrors and extra CAs, then slimmed down as the official slim images are."""
    main, security = _mirrors()
    sources = [f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main"]
    if security:
        sources.append(f"deb {security} {SUITE}-security main")
    (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    (root / "etc/dpkg/dpkg.cfg.d/openanalytics-slim").write_text(
        "".join(f"path-exclude {path}\n" for path in _SLIM) + "path-include /usr/share/doc/*/copyright\n")
    (root / "etc/apt/apt.conf.d/openanalytics-slim").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Languages "none";\n')
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    for certificate in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        target = root / "usr/local/share/ca-certificates" / certificate.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(certificate, target)
    script = (f"apt-get -qq update && apt-get -qq install -y {' '.join(packages)} && update-ca-certificates "
              "&& apt-get -qq clean")
    done = subprocess.run(["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
                           "chroot", str(root), "/bin/sh", "-c", script],
                          env={"PATH": PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"installing {' '.join(packages)} into the stand-in failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    policy.unlink()
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)
    for pattern in (*_SLIM, "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/log/*.log", "var/log/apt/*",
                    "tmp/*", "root/.cache"):
        for path in root.glob(pattern.lstrip("/")):
            if path.name == "copyright":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    return [point for point in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
            if (point + "/").startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a bind-mounted /dev would be the host's)."""
    mounted = _mounts_under(path)
    if mounted:
        raise RuntimeError(f"not removing {path}: mounted inside it: {', '.join(mounted)}")
    shutil.rmtree(path, ignore_errors=True)


def _mirrors() -> tuple[str, str | None]:
    """The Debian mirror and security mirror the machine's apt already uses (deb822 or one-line)."""
    uris: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                uris += line.split()[1:]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"]:
                    uris += [part for part in parts[1:] if "://" in part][:1]
    main = [uri for uri in uris if "security" not in uri and "debian" in uri]
    security = [uri for uri in uris if "security" in uri]
    if not main:
        raise EngineUnavailable("no Debian mirror found in /etc/apt to build the base images' stand-ins from")
    return main[0].rstrip("/"), security[0].rstrip("/") if security else None


# The project's image ---------------------------------------------------------------------------

def build(docker: DockerEngine, *, embedded: bool = False, tag: str | None = None, log=sys.stderr) -> str:
    """The Dockerfile built from the work tree (layers cached in the engine's data root); its name."""
    tag = tag or (EMBEDDED_IMAGE if embedded else IMAGE)
    variant = "embedded" if embedded else "slim"
    args = ["build", "--network", "host", "-f", str(ROOT / "Dockerfile")]
    if embedded:
        args += ["--build-arg", "EXTRAS=embedded"]
    started = time.monotonic()
    transcript = docker.folder / f"build-{tag.replace(':', '-').replace('/', '-')}.log"
    # Every stage tagged too (the legacy builder leaves the stages before the last untagged): the
    # untagged images are then only what earlier builds left, pruned when the engine stops.
    targets = [(["--target", stage], f"openanalytics-stage:{stage}-{variant}")
               for _, stage in _from_lines()[:-1] if stage] + [([], tag)]
    # One build at a time on the cached data root: a second process finds the first one's layers.
    with transcript.open("w") as out, open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_base_images(docker, log)
        for target, name in targets:
            done = subprocess.run([_docker_cli(), *args, *target, "-t", name, str(ROOT)], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800,
                                  env={**os.environ, "DOCKER_HOST": docker.host, "DOCKER_BUILDKIT": "0",
                                       "DOCKER_CONFIG": str(docker.client_config)})
            if done.returncode != 0:
                tail = "\n".join(transcript.read_text(errors="replace").splitlines()[-40:])
                raise RuntimeError(f"docker build of {name} failed ({done.returncode}); {transcript}:\n{tail}")
    print(f"built {tag} in {time.monotonic() - started:.0f} s ({docker.image_size(tag) / 1e6:.0f} MB)", file=log)
    return tag


def built_image(folder: Path, *, embedded: bool = False) -> str:
    """The image built from the work tree once per process, on this process's engine; its name."""
    if embedded not in _built:
        _built[embedded] = build(engine(folder), embedded=embedded)
    return _built[embedded]


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    folder = Path(tempfile.mkdtemp(prefix="oa-docker-"))
    try:
        if command == "build":  # scripts/test, before pytest; or by hand
            variants = {"--slim": [False], "--embedded": [True]}.get(sys.argv[2] if len(sys.argv) > 2 else "",
                                                                       [False, True])
            for embedded in variants:
                print(built_image(folder, embedded=embedded), flush=True)
        elif command == "start":
            docker = engine(folder)
            print(f"dockerd on {docker.host} (data root {docker.data_root}); in another shell:\n"
                  f"  export DOCKER_HOST={docker.host} DOCKER_BUILDKIT=0\nCtrl-C stops it.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while docker.running:
                    time.sleep(1)
        else:
            raise SystemExit("usage: python -m tests.support.docker_engine build [--slim | --embedded] | start")
    except EngineUnavailable as error:
        raise SystemExit(f"{error}\nThe image tests will be skipped.") from None
    finally:
        _stop_engine()
        with contextlib.suppress(RuntimeError):
            _remove_tree(folder)


if __name__ == "__main__":
    main()
