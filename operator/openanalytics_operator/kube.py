"""The Kubernetes calls the operator makes itself (the key Secrets), through kubernetes_asyncio.

kopf watches and patches AnalyticsProjects and posts Events with its own client; the rest goes
through the asyncio port of the official client, so that a reconcile waiting on the API server
does not hold one of the few threads that run the store calls. Its credentials are loaded the
standard way: the pod's service account in a cluster, else KUBECONFIG or ~/.kube/config.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator
from typing import Any

import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException


async def _configuration() -> client.Configuration:
    """The pod's service account in a cluster (its token re-read as it rotates), else the kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    return configuration


class SecretConflict(Exception):
    """A Secret by the wanted name exists and is not this object's."""


class Secrets:
    """Get, create or update, list and delete Secrets; any other failure is kopf's to retry."""

    def __init__(self) -> None:
        self._api: client.CoreV1Api | None = None
        self._lock = asyncio.Lock()

    async def _core(self) -> client.CoreV1Api:
        async with self._lock:  # many reconciles start at once; credentials are loaded once
            if self._api is None:
                self._api = client.CoreV1Api(client.ApiClient(await _configuration()))
            return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.api_client.close()
            self._api = None

    async def get(self, namespace: str, name: str) -> client.V1Secret | None:
        api = await self._core()
        with _retryable(f"reading Secret {namespace}/{name}"):
            try:
                return await api.read_namespaced_secret(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise

    async def put(self, secret: dict[str, Any], owner_label: tuple[str, str]) -> None:
        """Create the Secret, or replace its labels and data if it is ours (it carries `owner_label`)."""
        meta = secret["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        existing = await self.get(namespace, name)
        api = await self._core()
        with _retryable(f"writing Secret {namespace}/{name}"):
            if existing is None:
                await api.create_namespaced_secret(namespace, secret)
                return
            label, value = owner_label
            if (existing.metadata.labels or {}).get(label) != value:
                raise SecretConflict(f"Secret {name} exists and is not managed for this object")
            await api.patch_namespaced_secret(name, namespace, {"metadata": {"labels": meta.get("labels", {})},
                                                                "data": secret["data"]})

    async def delete(self, namespace: str, name: str) -> None:
        api = await self._core()
        with _retryable(f"deleting Secret {namespace}/{name}"):
            try:
                await api.delete_namespaced_secret(name, namespace)
            except ApiException as error:
                if error.status != 404:
                    raise

    async def names(self, namespace: str, selector: str) -> dict[str, dict[str, str]]:
        """The Secrets matching a label selector: name → labels."""
        api = await self._core()
        with _retryable(f"listing Secrets in {namespace}"):
            found = await api.list_namespaced_secret(namespace, label_selector=selector)
        return {item.metadata.name: item.metadata.labels or {} for item in found.items}


@contextlib.contextmanager
def _retryable(what: str) -> Iterator[None]:
    """An API error becomes kopf.TemporaryError: kopf retries the handler with backoff."""
    try:
        yield
    except ApiException as error:
        raise kopf.TemporaryError(f"{what}: {error.status} {error.reason}", delay=5) from error


async def served(group: str, version: str, plural: str) -> bool:
    """Whether the API server serves the resource (discovery: any authenticated user may ask)."""
    async with client.ApiClient(await _configuration()) as api:
        try:
            found = await client.CustomObjectsApi(api).get_api_resources(group, version)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
    return any(resource.name == plural for resource in found.resources)


def secret_value(secret: client.V1Secret | None, key: str) -> str | None:
    raw = ((secret.data if secret is not None else None) or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def encoded(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
