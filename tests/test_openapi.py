"""The served spec: OpenAPI 3.1, every /v1 route documented with its errors and the bearer scheme."""

from __future__ import annotations


async def test_openapi_is_3_1_with_bearer_and_error_schema(client):
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), (method, path)
            assert "422" not in operation["responses"], "validation errors are answered 400"
            if path.startswith("/v1"):
                assert operation.get("security"), (method, path)
                for status in ("401", "403"):
                    ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
    assert {"/collect", "/v1/projects", "/v1/projects/{project_id}", "/v1/projects/{project_id}/events",
            "/v1/projects/{project_id}/pageviews", "/healthz", "/readyz"} <= set(spec["paths"])


async def test_interactive_docs_are_served(client):
    response = await client.get("/docs")
    assert response.status_code == 200 and "swagger" in response.text.lower()


async def test_unknown_route_and_method_use_the_error_shape(client, tenant):
    missing = await client.get("/v1/nothing-here", headers=tenant.headers)
    assert missing.status_code == 404 and set(missing.json()) == {"error", "message"}
    wrong = await client.delete("/v1/projects", headers=tenant.headers)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


async def test_spec_validates_and_documents_examples_and_rate_limit_headers(client):
    from openapi_spec_validator import validate

    spec = (await client.get("/openapi.json")).json()
    validate(spec)  # the standard validator, for OpenAPI 3.1
    schemas = spec["components"]["schemas"]
    assert set(spec["components"]["headers"]) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("description") or operation.get("summary"), where
            for parameter in operation.get("parameters", []):
                assert parameter.get("examples") or parameter["schema"].get("examples") or parameter["schema"].get("enum") \
                    or parameter["schema"].get("anyOf"), (where, parameter["name"])
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json")
                if content:
                    ref = content["schema"].get("$ref", "").rsplit("/", 1)[-1]
                    assert "example" in content or "examples" in content or "examples" in schemas.get(ref, {}), (where, status)
                if path.startswith("/v1"):
                    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(response["headers"]), (where, status)
                    if status == "429":
                        assert "Retry-After" in response["headers"]
            if path.startswith("/v1"):
                assert {"401", "429"} <= set(operation["responses"]), where
    body = spec["paths"]["/v1/projects/{project_id}/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["oneOf"][1]["maxItems"] == 1000 and set(body["examples"]) == {"one", "batch"}


async def test_operation_ids_are_plain_and_unique(client):
    spec = (await client.get("/openapi.json")).json()
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(i.isidentifier() and not i.endswith(("_get", "_post", "_delete")) for i in ids), ids
