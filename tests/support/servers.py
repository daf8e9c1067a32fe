"""Private PostgreSQL and Redis servers for the tests, run as child processes we own.

    redis = start_redis(folder, aof=True)      # Debian's redis-server on a free loopback port
    redis.url(9)                               # redis://127.0.0.1:PORT/9
    redis.kill(); redis.start()                # a crash, then a restart on the same port from its AOF
    pg = start_postgres(folder)                # initdb into a temporary folder, postgres on a free port
    pg.admin_url                               # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
    pg.close()                                 # stops it and deletes its data

They listen on 127.0.0.1 only, on ports picked at random below the kernel's ephemeral range
(so a stopped server's port is not taken by an outgoing connection while it is down), and
never touch a server the user runs: a server counts as started only once the process we
started answers on its port. Missing binaries are installed from Debian's packages when we
are root with apt-get, without letting the packages start (or, for PostgreSQL, create)
servers of their own. Servers stop when the Python process exits (atexit) and die with it
if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import pwd
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Self, TypeVar

DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")


class ServerUnavailable(RuntimeError):
    """A server's binaries are missing and cannot be installed here."""


Server = TypeVar("Server", bound="ChildServer")


def start_redis(folder: Path, *, port: int | None = None, aof: bool = False, args: Sequence[str] = ()) -> RedisServer:
    """A redis-server on 127.0.0.1 keeping its files (and redis.log) in `folder`, answering PING."""
    return _started(RedisServer(folder, port=port, aof=aof, args=args, binary=_redis_binary()))


def start_postgres(folder: Path, *, port: int | None = None) -> PostgresServer:
    """A fresh PostgreSQL cluster (trust auth, superuser `postgres`) on 127.0.0.1, accepting connections.

    Its log goes to `folder`; its data to a temporary folder under /tmp that the server's user
    can reach (pytest's folders are private to us), removed by close().
    """
    return _started(PostgresServer(folder, port=port, bindir=_postgres_server_bindir()))


def _started(server: Server) -> Server:
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


class ChildServer:
    """A server process we start, stop, kill and start again on the same port.

    The process runs in a session (process group) of its own: kill() takes down the server
    and any process it forked at once, like a crash of the machine it runs on.
    """

    name = "server"
    log_name = "server.log"
    stop_signal = signal.SIGTERM
    death_signal = signal.SIGKILL  # what the server gets if the Python process dies first
    ready_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, folder: Path, port: int | None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log = self.folder / self.log_name
        self.process: subprocess.Popen | None = None
        _open_servers.add(self)

    # What a server says: subclasses.
    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def answers(self, process: subprocess.Popen, port: int) -> bool:
        """Whether `process` (not some other server) serves on `port` and is ready for the tests."""
        raise NotImplementedError

    def spawn_options(self) -> dict:
        return {}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the server (again: same port and files) and wait until it is ready."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        pick_port = self.port is None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            port = free_port() if pick_port else self.port
            process, outcome = self._try_start(port, deadline)
            if outcome == "ready":
                self.port, self.process = port, process
                return self
            # The port was taken after we looked (by anyone) or, when restarting, is not free yet.
            if outcome == "retry" and time.monotonic() < deadline:
                if not pick_port:
                    time.sleep(0.2)
                continue
            raise RuntimeError(f"{self.name} did not start on 127.0.0.1:{port} ({outcome}); "
                               f"its log {self.log}:\n{self._log_tail()}")

    def _try_start(self, port: int, deadline: float) -> tuple[subprocess.Popen, str]:
        since = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            process = _spawn(self.command(port), stdout=log, stderr=subprocess.STDOUT,
                             death_signal=self.death_signal, **self.spawn_options())
        while True:
            if process.poll() is not None:
                return process, "retry" if self._transient(self._log_since(since)) else f"exit {process.returncode}"
            if self.answers(process, port):
                return process, "ready"
            if time.monotonic() > deadline:
                _kill_group(process)
                return process, f"not ready after {self.ready_timeout:.0f}s"
            time.sleep(0.02)

    @staticmethod
    def _transient(log: str) -> bool:
        return "Address already in use" in log

    def stop(self) -> None:
        """Shut the server down cleanly (SIGKILL if it takes longer than stop_timeout)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self.stop_signal)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
        _wait_for_group(process.pid)

    def kill(self) -> None:
        """SIGKILL the server and everything it forked, and wait for them: a crash."""
        process, self.process = self.process, None
        if process is not None:
            _kill_group(process)

    def close(self) -> None:
        """Stop the server for good (the folder and its files stay)."""
        self.stop()
        _open_servers.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_since(0).splitlines()[-lines:]) if self.log.exists() else "(no log)"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {state} in {self.folder}>"


class RedisServer(ChildServer):
    name = "redis-server"
    log_name = "redis.log"

    def __init__(self, folder: Path, *, port: int | None = None, aof: bool = False, args: Sequence[str] = (),
                 binary: Path = DEBIAN_REDIS_SERVER):
        super().__init__(folder, port)
        self.aof = aof
        self.args = list(args)
        self.binary = binary

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self, port: int) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        return [str(self.binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.folder),
                "--save", "", *persistence, "--maxmemory-policy", "noeviction", "--daemonize", "no",
                "--logfile", str(self.log), *self.args]

    def ping(self) -> bool:
        """Whether our server answers PING now."""
        return self.running and _redis_info(self.port) is not None

    def answers(self, process: subprocess.Popen, port: int) -> bool:
        info = _redis_info(port)
        return (info is not None and info.get("process_id") == process.pid
                and not info.get("loading") and not info.get("async_loading"))


class PostgresServer(ChildServer):
    name = "PostgreSQL"
    log_name = "postgres.log"
    stop_signal = signal.SIGINT  # "fast" shutdown: does not wait for clients to disconnect
    death_signal = signal.SIGQUIT  # "immediate" shutdown: the postmaster takes its backends along

    def __init__(self, folder: Path, *, port: int | None = None, bindir: Path):
        # PostgreSQL refuses to run as root: then it runs as Debian's postgres user.
        self.user = _postgres_user() if os.geteuid() == 0 else None
        self.bindir = bindir
        super().__init__(folder, port)
        self.home = Path(tempfile.mkdtemp(prefix="oa-test-postgres-", dir="/tmp" if Path("/tmp").is_dir() else None))
        if self.user is not None:
            os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        self.data_dir = self.home / "data"
        try:
            self._initdb()
        except BaseException:
            self.close()
            raise

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _initdb(self) -> None:
        with self.log.open("ab") as log:
            done = subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self.spawn_options())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}); its log {self.log}:\n{self._log_tail()}")
        # Trust only on the private socket folder and 127.0.0.1 (initdb's -A trust also lists ::1).
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if self.user is not None:
            os.chown(hba, self.user.pw_uid, self.user.pw_gid)

    def command(self, port: int) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1", "port": port, "unix_socket_directories": self.home,
            # Fast, but a killed server still keeps every commit (synchronous_commit=off would not).
            "fsync": "off", "full_page_writes": "off",
            "TimeZone": "UTC", "log_timezone": "UTC",
        }
        return [str(self.bindir / "postgres"), "-D", str(self.data_dir),
                *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}"))]

    def spawn_options(self) -> dict:
        if self.user is None:
            return {"cwd": self.home}
        return {"cwd": self.home, "user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    @staticmethod
    def _transient(log: str) -> bool:
        # After kill(), a backend may still hold the old shared memory for a moment.
        return "Address already in use" in log or "pre-existing shared memory block" in log

    def answers(self, process: subprocess.Popen, port: int) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                 connect_timeout=2, autocommit=True) as conn:
                served = conn.execute("SHOW data_directory").fetchone()[0]
        except psycopg.OperationalError:
            return False
        return process.poll() is None and Path(served).resolve() == self.data_dir.resolve()

    def close(self) -> None:
        """Stop the server and delete its data folder."""
        super().close()
        shutil.rmtree(self.home, ignore_errors=True)


# Ports ---------------------------------------------------------------------------------------

def free_port() -> int:
    """A port free on 127.0.0.1 now, chosen at random below the kernel's ephemeral ports.

    Below that range no outgoing connection or bind to port 0 takes it while a server we
    stopped is down; two test runs pick the same one only by chance, and then the second
    server's bind fails and it picks again.
    """
    low, high = 15000, _ephemeral_ports_start()
    if high - low < 1000:  # an unusual range: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    choose = random.SystemRandom()
    for _ in range(200):
        port = choose.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {low} and {high}")


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Processes -----------------------------------------------------------------------------------

def _spawn(argv: list[str], *, death_signal: int, **options) -> subprocess.Popen:
    """Popen in a session of its own, sent `death_signal` when this process dies.

    The kernel sends PR_SET_PDEATHSIG when the *thread* that forked the child ends, not the
    process; so every server is forked by one daemon thread that lives as long as the process
    (a test's or an executor's thread would take its servers along when it finishes).
    """
    options = dict(stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent(death_signal),
                   **options)
    return _on_spawner_thread(lambda: subprocess.Popen(argv, **options))


_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue] | None = None  # (pid that started it, its jobs)


def _on_spawner_thread(job: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or we are a forked child
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_run_spawner, args=(jobs,), name="test-server-spawner", daemon=True).start()
            _spawner = (os.getpid(), jobs)
        future: Future = Future()
        _spawner[1].put((job, future))
    return future.result()


def _run_spawner(jobs: queue.SimpleQueue) -> None:
    while True:
        job, future = jobs.get()
        try:
            future.set_result(job())
        except BaseException as error:  # handed to the caller
            future.set_exception(error)


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):  # not Linux: atexit is all we have
        return None
    pr_set_pdeathsig, sig = 1, int(sig)
    return lambda: prctl(pr_set_pdeathsig, sig)  # runs in the child after any change of user


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _wait_for_group(process.pid)


def _wait_for_group(pgid: int, timeout: float = 2.0) -> None:
    """Until the processes the server forked are gone too (briefly: zombies may linger unreaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


_open_servers: set[ChildServer] = set()


@atexit.register
def _close_open_servers() -> None:
    for server in list(_open_servers):
        with contextlib.suppress(Exception):
            server.close()


def _redis_info(port: int) -> dict | None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default backoff would spend seconds on a port nobody listens on yet.
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                         retry=Retry(NoBackoff(), 0))
    try:
        if not client.ping():
            return None
        return client.info()
    except redis.RedisError:  # refused, or busy loading its data
        return None
    finally:
        client.close()


# Binaries ------------------------------------------------------------------------------------

def _redis_binary() -> Path:
    for candidate in (DEBIAN_REDIS_SERVER, shutil.which("redis-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    _apt_install("redis-server", "redis-server", DEBIAN_REDIS_SERVER.is_file)
    if DEBIAN_REDIS_SERVER.is_file():
        return DEBIAN_REDIS_SERVER
    raise ServerUnavailable("redis-server is still missing after installing Debian's redis-server")


def _postgres_server_bindir() -> Path:
    if _postgres_bindir() is None:
        _apt_install("postgresql", "PostgreSQL's server binaries (initdb, postgres)", lambda: _postgres_bindir() is not None)
    bindir = _postgres_bindir()
    if bindir is None:
        raise ServerUnavailable("PostgreSQL's server binaries are still missing after installing Debian's postgresql")
    return bindir


def _postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL with its server binaries (else initdb on PATH, e.g. Homebrew's)."""
    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    debian = [b for b in DEBIAN_POSTGRES_ROOT.glob("*/bin") if (b / "initdb").is_file() and (b / "postgres").is_file()]
    if debian:
        return max(debian, key=version)
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "postgres").is_file():
        return Path(initdb).resolve().parent
    return None


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable("PostgreSQL refuses to run as root and there is no `postgres` user to run it as "
                                "(Debian's postgresql package creates one)") from None


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
NO_MAIN_CLUSTER = Path("/etc/postgresql-common/createcluster.d/zz-openanalytics-tests.conf")


def _apt_install(package: str, what: str, installed: Callable[[], bool]) -> None:
    """Install a Debian package for the tests, keeping it from starting (or creating) servers.

    policy-rc.d answers 101 so that the package's service is not started (a redis-server or
    PostgreSQL of the machine's own on 6379/5432), and a createcluster.conf drop-in keeps
    postgresql from creating its "main" cluster. Both are removed again; existing clusters
    and services are left as they are. One test run installs at a time.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerUnavailable(
            f"{what} not found, and only root with apt-get can install it here: install Debian's "
            f"{package} package, or give the tests your own servers (OA_TEST_REDIS_URL, OA_TEST_PG_ADMIN_URL; "
            f"see README), or run scripts/test -m 'not server_stores'")
    placed: list[Path] = []
    with open("/tmp/openanalytics-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():  # by another test run while we waited
            return
        try:
            for path, text, mode in ((POLICY_RC_D, "#!/bin/sh\nexit 101\n", 0o755),
                                     (NO_MAIN_CLUSTER, "create_main_cluster = false\n", 0o644)):
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
                    path.chmod(mode)
                    placed.append(path)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            apt = ["apt-get", "-qq", "-o", "DPkg::Lock::Timeout=300"]
            done = subprocess.run([*apt, "update"], env=env, capture_output=True, text=True)
            if done.returncode == 0:
                done = subprocess.run([*apt, "install", "-y", "--no-install-recommends", package],
                                      env=env, capture_output=True, text=True)
        finally:
            for path in placed:
                path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ServerUnavailable(f"apt-get could not install {package} for {what}:\n{done.stdout}{done.stderr}")


def install_missing(*, redis: bool = True, postgres: bool = True) -> None:
    """Install Debian's redis-server and postgresql where they are missing (root with apt-get only)."""
    if redis:
        _redis_binary()
    if postgres:
        _postgres_server_bindir()


if __name__ == "__main__":  # scripts/test, before pytest (an install inside a test would count against its timeout)
    try:
        install_missing(redis=not os.environ.get("OA_TEST_REDIS_URL"), postgres=not os.environ.get("OA_TEST_PG_ADMIN_URL"))
    except ServerUnavailable as error:
        raise SystemExit(f"{error}\nThe server-store tests will fail.") from None
