"""The few Kubernetes calls the operator makes itself (Secrets), over the connection kopf uses.

kopf brings aiohttp and logs in (kubeconfig, service account, or a login handler); this
reuses the same credentials rather than adding a second Kubernetes client library.
"""

from __future__ import annotations

import base64
import ssl
from typing import Any

import aiohttp
import kopf


class Kube:
    def __init__(self, info: kopf.ConnectionInfo):
        self.server = info.server.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if info.token:
            self.headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self.ssl: ssl.SSLContext | bool = False if info.insecure else True
        if not info.insecure and info.ca_path:
            self.ssl = ssl.create_default_context(cafile=info.ca_path)
        elif not info.insecure and info.ca_data:
            self.ssl = ssl.create_default_context(cadata=base64.b64decode(info.ca_data).decode())

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

    async def put_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the Secret, or replace its data and labels if it exists."""
        name = body["metadata"]["name"]
        if await self.get_secret(namespace, name) is None:
            await self._call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
        else:
            patch = {"metadata": {"labels": body["metadata"].get("labels", {})}, "data": body["data"]}
            await self._call("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", patch)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}", ok=(200, 202))

    async def list_secrets(self, namespace: str, selector: str) -> list[dict]:
        found = await self._call("GET", f"/api/v1/namespaces/{namespace}/secrets?labelSelector={selector}")
        return (found or {}).get("items", [])


def secret_value(secret: dict | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def encoded(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
