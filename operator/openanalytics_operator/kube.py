"""The few Kubernetes calls the operator makes itself (Secrets), over the connection kopf uses.

kopf brings aiohttp and logs in (kubeconfig, service account, or a login handler); this
reuses the same credentials, updated in place on every login, rather than adding a second
Kubernetes client library.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf


class SecretConflict(Exception):
    """A Secret by the wanted name exists and is not this object's."""


class Kube:
    def __init__(self) -> None:
        self.server = ""
        self.headers: dict[str, str] = {}
        self.ssl: ssl.SSLContext | bool = True

    def use(self, info: kopf.ConnectionInfo) -> None:
        """Take the credentials of kopf's latest login (token, basic auth or client certificate)."""
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            plain = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {plain}"
        if info.insecure:
            context: ssl.SSLContext | bool = False
        else:
            context = ssl.create_default_context(cafile=info.ca_path) if info.ca_path else ssl.create_default_context()
            if info.ca_data:
                context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
            cert = _file(info.certificate_path, info.certificate_data)
            key = _file(info.private_key_path, info.private_key_data)
            if cert:
                context.load_cert_chain(cert, key)
        self.headers, self.ssl = headers, context

    async def _call(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> dict | None:
        headers = dict(self.headers)
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.request(method, self.server + path, json=body, ssl=self.ssl) as response:
                if response.status == 404:
                    return None
                if response.status not in ok:
                    raise kopf.TemporaryError(f"{method} {path}: {response.status} {await response.text()}", delay=5)
                return await response.json()

    async def get_secret(self, namespace: str, name: str) -> dict | None:
        return await self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def put_secret(self, namespace: str, body: dict[str, Any], owner_label: tuple[str, str]) -> None:
        """Create the Secret, or replace its data if it is ours (it carries `owner_label`)."""
        name = body["metadata"]["name"]
        existing = await self.get_secret(namespace, name)
        if existing is None:
            await self._call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
            return
        label, value = owner_label
        if (existing.get("metadata", {}).get("labels") or {}).get(label) != value:
            raise SecretConflict(f"Secret {name} exists and is not managed for this object")
        patch = {"metadata": {"labels": body["metadata"].get("labels", {})}, "data": body["data"]}
        await self._call("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", patch)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}", ok=(200, 202))

    async def list_secrets(self, namespace: str, selector: str) -> list[dict]:
        found = await self._call("GET", f"/api/v1/namespaces/{namespace}/secrets?labelSelector={selector}")
        return (found or {}).get("items", [])


def _file(path: str | None, data: bytes | str | None) -> str | None:
    """A path for ssl to read: the given one, or the inline (base64) data written to a private file."""
    if path or not data:
        return path
    raw = base64.b64decode(data) if isinstance(data, str) else data
    handle, name = tempfile.mkstemp(prefix="oa-kube-")
    with os.fdopen(handle, "wb") as out:
        out.write(raw)
    return name


def secret_value(secret: dict | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def encoded(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
