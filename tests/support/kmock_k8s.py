"""Stands in for a Kubernetes API server: kmock's emulator with the gaps filled that kopf (and
a real API server) rely on: metadata.uid / resourceVersion / creationTimestamp / generation /
namespace, generateName, the status subresource, watches from a resourceVersion, 422 on a
failed JSON-patch test. Relies on kmock 0.8 internals (pinned in pyproject).

    async with serve_emulator() as (emulator, url):
        ...  # url = "http://127.0.0.1:<random port>"
"""

import base64
import contextlib
import copy
import datetime
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator

import jsonpatch
import kmock
from kmock._internal import parsing
from kmock._internal.dicts import merge_patch_dict  # same merge logic kmock applies itself

CR = 'openanalytics.io/v1alpha1/analyticsprojects'
RW_VERBS = {'create', 'delete', 'get', 'list', 'patch', 'update', 'watch', 'deletecollection'}
_RV = itertools.count(1000)  # global, monotonic resourceVersion counter (like etcd's revision)
_last_rv = 0


def _next_rv() -> str:
    global _last_rv
    _last_rv = next(_RV)
    return str(_last_rv)


# kmock 0.8 bug: '/api/v1/namespaces[/name]' is parsed as the '/namespaces/{ns}/...' prefix and
# crashes (HTTP 500), but kopf lists+watches namespaces in `--namespace X` mode. Patch the parser.
_orig_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip('/').split('/')
    if parts[:3] == ['api', 'v1', 'namespaces'] and len(parts) <= 4:
        return parsing.ParsedPath('', 'v1', 'namespaces', None, parts[3] if len(parts) == 4 else None)
    return _orig_parse_path(path)


parsing.parse_path = _parse_path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class FilledEmulator(kmock.KubernetesEmulator):
    # kmock keeps every request for assertions and scans them all on each new one (quadratic);
    # a long-running emulator (the benchmark's) keeps only the latest.
    request_memory: int | None = None

    async def _handle(self, request: kmock.Request):  # type: ignore[override]
        if self.request_memory and len(self._requests) > self.request_memory:
            del self._requests[:-self.request_memory]
        if request.resource is not None and request.data is not None:
            self._fill(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:  # kmock: 500 -> kopf retries the stale patch 9x
            raise kmock.KubernetesError(status=422, reason='Invalid', message=str(e))  # kopf: conflict

    async def _serve_list(self, request: kmock.Request):  # type: ignore[override]
        rv = _last_rv  # taken before the snapshot: a later watch replays anything newer
        result = await super()._serve_list(request)
        result['metadata']['resourceVersion'] = str(rv)  # kmock: '...'
        return result

    async def _serve_watch(self, request: kmock.Request):  # type: ignore[override]
        # kmock replays ALL existing objects as ADDED on every watch, ignoring ?resourceVersion=.
        # kopf then re-processes stale bodies right after its own patches. Replay only newer ones.
        since = request.params.get('resourceVersion', '')
        since_rv = int(since) if since.isdigit() else 0
        yield b''
        async with self._lock:
            objs = self._KubernetesEmulator__get_objs(request, strict=False)  # kmock's own helper
            replay = [{'type': 'ADDED', 'object': o.raw} for o in objs if not o.deleted
                      and int(o.raw.get('metadata', {}).get('resourceVersion') or 0) > since_rv]
        for event in replay:
            yield event
        async for event in self._buses[request.resource]:  # live events, same filter as kmock's
            meta = event.get('object', {}).get('metadata', {})
            if request.namespace is None or meta.get('namespace') == request.namespace:
                if request.name is None or meta.get('name') == request.name:
                    yield event

    def _fill(self, request: kmock.Request) -> None:
        data = request.data  # mutable dict/list; kmock stores/merges it after this
        res = request.resource
        has_status = res in self.resources and 'status' in self.resources[res].subresources
        if res == 'v1/secrets' and isinstance(data, dict) and data.get('stringData'):
            data.setdefault('data', {}).update(  # as the real API does on write
                {k: base64.b64encode(v.encode()).decode() for k, v in data.pop('stringData').items()})
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault('metadata', {})
            if not meta.get('name') and meta.get('generateName'):
                meta['name'] = meta['generateName'] + secrets.token_hex(3)
            if request.namespace:  # kmock's namespaced watches filter by metadata.namespace!
                meta.setdefault('namespace', request.namespace)
            meta.setdefault('uid', str(uuid.uuid4()))
            meta.setdefault('creationTimestamp', _now())
            meta['resourceVersion'] = _next_rv()
            meta['generation'] = 1
            if has_status:
                data.pop('status', None)  # real API ignores status on create
        elif request.action == kmock.action.UPDATE and request.name:
            key = (res, request.namespace, request.name)
            old = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
            if isinstance(data, list):  # JSON-patch (kopf uses it for patch fns only)
                data.append({'op': 'add', 'path': '/metadata/resourceVersion', 'value': _next_rv()})
                return
            if not isinstance(data, dict):
                return
            if request.subresource == 'status':
                for k in [k for k in data if k != 'status']:
                    del data[k]  # /status only changes .status
            elif has_status:
                data.pop('status', None)  # main endpoint ignores .status
            meta = data.setdefault('metadata', {})
            for k in ('uid', 'creationTimestamp', 'generation', 'deletionTimestamp', 'name', 'namespace'):
                meta.pop(k, None)  # read-only fields
            if old is not None and 'spec' in data:
                old_spec = copy.deepcopy(dict(old.raw.get('spec') or {}))
                if merge_patch_dict(old_spec, data['spec'] or {}) != old_spec:
                    meta['generation'] = old.raw['metadata'].get('generation', 1) + 1
            meta['resourceVersion'] = _next_rv()


def declare_resources(emu: kmock.KubernetesEmulator) -> None:
    emu.resources[CR] = kmock.ResourceInfo(
        kind='AnalyticsProject', singular='analyticsproject', namespaced=True,
        verbs=RW_VERBS, subresources={'status'}, shortnames={'oap'})
    emu.resources['v1/secrets'] = kmock.ResourceInfo(
        kind='Secret', singular='secret', namespaced=True, verbs=RW_VERBS)
    emu.resources['v1/events'] = kmock.ResourceInfo(
        kind='Event', singular='event', namespaced=True, verbs=RW_VERBS)
    emu.resources['v1/namespaces'] = kmock.ResourceInfo(
        kind='Namespace', singular='namespace', namespaced=False, verbs=RW_VERBS)
    emu.objects['v1/namespaces', None, 'default'] = {
        'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': 'default', 'uid': 'ns-default'}}


def kubeconfig(url: str) -> str:
    """A kubeconfig for the emulator at `url` (any token does)."""
    return ("apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: test, user: {token: test-token}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: test, namespace: default}}]\n")


@contextlib.asynccontextmanager
async def serve_emulator(host: str = '127.0.0.1', port: int | None = None, request_memory: int | None = None
                         ) -> AsyncIterator[tuple[FilledEmulator, str]]:
    emu = FilledEmulator()
    emu.request_memory = request_memory
    declare_resources(emu)
    async with emu, kmock.Server(emu, host=host, port=port) as server:
        yield emu, str(server.url).rstrip('/')



if __name__ == "__main__":  # the emulator in a process of its own: python -m tests.support.kmock_k8s
    import asyncio

    async def _serve() -> None:
        async with serve_emulator(request_memory=200) as (_, url):
            print(f"LISTENING {url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(_serve())
