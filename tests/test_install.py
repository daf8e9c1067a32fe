"""The README's "Install on Kubernetes" commands, run as written on a real API server.

The control plane of the tests (tests/support/kube.py, Kubernetes 1.20) has no kubelet and no
scheduler, so what needs running pods is left out, each for a reason said here: `docker build`
(tests/test_image.py builds and runs the image), Helm's `--wait`, hook Jobs and `helm test`.
`helm install` becomes `helm template` with the same arguments, applied with kubectl (the chart
asks for Kubernetes 1.29 or newer, which Helm checks against the server); `kubectl apply -k`
applies `kubectl kustomize`'s output. Objects whose API version 1.20 does not serve (policy/v1
PodDisruptionBudget, autoscaling/v2 HPA) are left out by name. Everything else is created for
real, and then the operator, run with the token of the ServiceAccount the install made, brings
the example projects to Ready.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import server_store_urls

ROOT = Path(__file__).resolve().parent.parent
NOT_ON_1_20 = {("policy/v1", "PodDisruptionBudget"), ("autoscaling/v2", "HorizontalPodAutoscaler")}

pytestmark = pytest.mark.kube


def install_blocks() -> list[list[list[str]]]:
    """The shell blocks of the README's "Install on Kubernetes" section, as argument lists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Install on Kubernetes"):]
    section = section[:section.index("\n## ", 1)]
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
        blocks.append(commands)
    return blocks


def test_the_readme_has_the_steps_this_file_runs():
    blocks = install_blocks()
    assert [[c[:2] for c in block] for block in blocks] == [
        [["docker", "build"], ["helm", "install"], ["helm", "test"]],
        [["kubectl", "create"], ["kubectl", "-n"], ["helm", "install"]],
        [["kubectl", "create"], ["kubectl", "-n"], ["kubectl", "apply"], ["kubectl", "apply"]],
    ]


class Installer:
    def __init__(self, plane, tools: Path, tmp_path: Path):
        self.plane, self.tools, self.tmp_path = plane, tools, tmp_path
        self.namespaces: set[str] = set()
        self.left_out: list[str] = []

    def run(self, words: list[str]) -> None:
        tool, args = words[0], words[1:]
        if tool == "docker":
            self.left_out.append("docker build: tests/test_image.py")
        elif tool == "helm" and args[0] == "test":
            self.left_out.append("helm test: no kubelet to run its pod")
        elif tool == "helm" and args[0] == "install":
            namespace = args[args.index("-n") + 1] if "-n" in args else None
            self.apply(self.helm_template(args[1:]), namespace)
        elif tool == "kubectl" and "apply" in args and "-k" in args:
            rendered = self.plane.kubectl("kustomize", str(ROOT / args[args.index("-k") + 1])).stdout
            self.apply([d for d in yaml.safe_load_all(rendered) if d])
        elif tool == "kubectl":
            self.plane.kubectl(*args)
            if args[:2] == ["create", "namespace"]:
                self.namespaces.add(args[2])
        else:
            raise AssertionError(f"a README step this test does not know: {shlex.join(words)}")

    def helm_template(self, args: list[str]) -> list[dict]:
        kept, namespace, skip_value = [], None, False
        for word in args:
            if skip_value:
                skip_value = False
            elif word == "--timeout":  # waiting is for pods, which never run here
                skip_value = True
            elif word == "--wait":
                pass
            elif word == "--create-namespace":
                namespace = "create"
            else:
                kept.append(word)
        if namespace:
            name = kept[kept.index("-n") + 1]
            self.plane.kubectl("create", "namespace", name)
            self.namespaces.add(name)
        done = subprocess.run([str(self.tools / "helm"), "template", *kept], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def apply(self, docs: list[dict], namespace: str | None = None) -> None:
        served = [d for d in docs if (d["apiVersion"], d["kind"]) not in NOT_ON_1_20]
        self.left_out += [f"{d['kind']}/{d['metadata']['name']}: not served by Kubernetes 1.20"
                          for d in docs if d not in served]
        if not served:
            return
        text = "\n---\n".join(yaml.safe_dump(d) for d in served)
        self.plane.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", stdin=text)

    def clean(self) -> None:
        for namespace in sorted(self.namespaces):
            self.plane.kubectl("delete", "namespace", namespace, "--wait", "--timeout=120s")
        self.namespaces.clear()


@pytest.fixture
def installer(control_plane, tmp_path):
    from tests.support.kube import tools

    installer = Installer(control_plane, tools(), tmp_path)
    yield installer
    print("left out:", *installer.left_out, sep="\n  ")


def test_helm_for_evaluation_with_the_stores_inside(installer, control_plane):
    for words in install_blocks()[0]:
        installer.run(words)
    names = control_plane.kubectl("get", "deployments,statefulsets,jobs", "-n", "analytics", "-o", "name").stdout.split()
    assert {"deployment.apps/openanalytics-api", "deployment.apps/openanalytics-worker",
            "deployment.apps/openanalytics-operator", "statefulset.apps/openanalytics-postgresql",
            "statefulset.apps/openanalytics-redis", "statefulset.apps/openanalytics-clickhouse"} <= set(names), names
    installer.clean()


def test_helm_with_your_own_stores(installer, control_plane):
    for words in install_blocks()[1]:
        installer.run(words)
    names = control_plane.kubectl("get", "deployments", "-n", "analytics", "-o", "name").stdout.split()
    assert {"deployment.apps/openanalytics-api", "deployment.apps/openanalytics-worker",
            "deployment.apps/openanalytics-operator"} == set(names)
    installer.clean()


@pytest.mark.server_stores
def test_kustomize_then_the_operator_makes_the_examples_ready(installer, control_plane, request, server_backends,
                                                             tmp_path):
    for words in install_blocks()[2]:
        installer.run(words)
    kubeconfig = control_plane.service_account_kubeconfig("openanalytics", "openanalytics-operator",
                                                          tmp_path / "operator.kubeconfig")
    deployment = yaml.safe_load(control_plane.kubectl("get", "deployment", "openanalytics-operator", "-n",
                                                      "openanalytics", "-o", "yaml").stdout)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "operator"
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "OA_OPERATOR_NAMESPACES": "openanalytics",
           **server_store_urls(request)}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:  # the Deployment's command, as its ServiceAccount (there is no kubelet to run it)
        operator = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", *container["args"][:1]], env=env,
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            found = yaml.safe_load(control_plane.kubectl("get", "analyticsprojects", "-n", "openanalytics",
                                                         "-o", "yaml").stdout)["items"]
            phases = {p["metadata"]["name"]: p.get("status", {}).get("phase") for p in found}
            if phases == {"blog": "Ready", "shop": "Ready"}:
                break
            assert operator.poll() is None and time.monotonic() < deadline, (phases, log.read_text()[-3000:])
            time.sleep(0.5)
        secrets = control_plane.kubectl("get", "secrets", "-n", "openanalytics", "-o", "name",
                                        "-l", "app.kubernetes.io/managed-by=openanalytics-operator").stdout.split()
        assert sorted(secrets) == ["secret/blog-backend", "secret/shop-backend", "secret/shop-dashboards",
                                   "secret/shop-privacy"]
    finally:
        operator.send_signal(signal.SIGINT)
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
    assert "Forbidden" not in log.read_text()
