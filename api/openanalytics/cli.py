"""The `openanalytics` command.

Project and key commands touch only the control plane, so they work while `standalone`
holds the embedded ClickHouse; the running process provisions new projects within a second.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from openanalytics import migrations
from openanalytics.config import Settings, get_settings
from openanalytics.projects.plans import LIMIT_NAMES, Plan
from openanalytics.stores.sql import Database


def _settings() -> Settings:
    return get_settings()


def _control_plane() -> Database:
    settings = _settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    migrations.upgrade(db.engine)
    return db


def _emit(as_json: bool, data: Any, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(human(data))


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def fails_cleanly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper


def _require_events_engine(settings: Settings) -> None:
    """Fail at once, and clearly, where the embedded ClickHouse is asked for but not installed."""
    from openanalytics.stores.clickhouse import EmbeddedEngineMissing, embedded_engine_installed

    if settings.clickhouse_is_embedded and not embedded_engine_installed():
        raise click.ClickException(str(EmbeddedEngineMissing()))


def _logging() -> None:
    from openanalytics import logs

    logs.setup(_settings().log_level, _settings().log_format)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="openanalytics")
def main() -> None:
    """OpenAnalytics: privacy-first web and product analytics, API first."""


# -- processes -------------------------------------------------------------


def _serve(with_worker: bool, host: str | None, port: int | None) -> None:
    import uvicorn

    from openanalytics.app import create_app, http_protocol, served, settle_heap
    from openanalytics.runtime import Stores

    from openanalytics import telemetry

    settings = _settings()
    _require_events_engine(settings)
    _logging()
    telemetry.configure("openanalytics-api")
    stores = Stores.open(settings)
    if with_worker:
        stores.migrate_control_plane()
    app = create_app(stores, with_worker=with_worker, owns_stores=True)
    settle_heap()
    # No access log (it would hold client IPs) and no proxy headers from uvicorn: the
    # client IP is taken from X-Forwarded-For only for OA_TRUSTED_PROXIES, by the app.
    uvicorn.run(
        served(app), host=host or settings.host, port=port or settings.port, log_level="info",
        access_log=False, proxy_headers=False, log_config=None,  # our handlers (JSON lines)
        http=http_protocol(app),
    )


@main.command()
@click.option("--host", help="Interface to bind (default OA_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="Port (default OA_PORT or 8000).")
def standalone(host: str | None, port: int | None) -> None:
    """API and worker in one process; embedded stores under OA_DATA_DIR unless URLs are set."""
    settings = _settings()
    _require_events_engine(settings)
    if settings.clickhouse_is_embedded or settings.database_url is None:
        click.echo(f"data directory: {settings.data_dir}", err=True)
    _serve(True, host, port)


@main.command()
@click.option("--host", help="Interface to bind (default OA_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="Port (default OA_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """The API alone (run `worker` beside it)."""
    _serve(False, host, port)


@main.command()
@click.option("--namespace", "namespaces", multiple=True, envvar="OA_OPERATOR_NAMESPACES",
              help="Watch this namespace (repeatable; or OA_OPERATOR_NAMESPACES, space-separated).")
@click.option("--all-namespaces", "clusterwide", is_flag=True, help="Watch every namespace.")
@click.option("--liveness", default=None, help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
def operator(namespaces: tuple[str, ...], clusterwide: bool, liveness: str | None) -> None:
    """Reconcile AnalyticsProject objects (the kopf operator; the same as `kopf run -m openanalytics_operator`)."""
    if not namespaces and not clusterwide:
        raise click.UsageError("give --namespace NAME (repeatable) or --all-namespaces")
    _require_events_engine(_settings())
    import kopf

    import openanalytics_operator.handlers  # noqa: F401  (registers the handlers)

    from openanalytics import telemetry

    kopf.configure(verbose=False)
    _logging()
    telemetry.configure("openanalytics-operator")
    kopf.run(standalone=True, namespaces=namespaces, clusterwide=clusterwide, liveness_endpoint=liveness)


@main.command()
def worker() -> None:
    """Drain the ingest stream into ClickHouse and keep projects provisioned."""
    from openanalytics.app import settle_heap
    from openanalytics.runtime import Stores
    from openanalytics.worker.runner import Worker

    from openanalytics import telemetry

    _require_events_engine(_settings())
    _logging()
    telemetry.configure("openanalytics-worker")
    stores = Stores.open(_settings())

    async def run() -> None:
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Worker(stores).run(stop)
        finally:
            await stores.close()

    asyncio.run(run())


@main.command()
@json_option
def migrate(as_json: bool) -> None:
    """Migrate the control plane and every project's ClickHouse database."""
    from openanalytics.provisioning.projects import provision_pending
    from openanalytics.runtime import Stores

    settings = _settings()
    _require_events_engine(settings)
    db = _control_plane()
    db.dispose()
    try:
        stores = Stores.open(settings)
    except Exception as exc:  # chdb: another process holds the data directory
        raise click.ClickException(
            f"cannot open the events store ({exc}); if `standalone` is running it migrates on its own"
        ) from None
    try:
        changed = stores.migrate_control_plane()
        done = provision_pending(stores.db, stores.events)
    finally:
        asyncio.run(stores.close())
    _emit(as_json, {"control_plane": "head", "plans_applied": changed, "provisioned": done},
          lambda d: f"control plane at head; plan limits changed for {len(d['plans_applied'])} project(s); "
                    f"provisioned {len(d['provisioned'])} project database(s)")


# -- projects --------------------------------------------------------------


def _project_dict(project) -> dict[str, Any]:
    from openanalytics.projects.schemas import ProjectOut

    return ProjectOut.of(project).model_dump(mode="json")


def _project_line(p: dict[str, Any]) -> str:
    domains = ",".join(p["domains"]) or "any domain"
    return f"{p['id']}  {p['name']}  plan={p['plan']}  site_id={p['site_id']}  {domains}"


@main.group()
def projects() -> None:
    """Create and list projects."""


def _parse_limits(values: tuple[str, ...]) -> dict[str, int]:
    limits = {}
    for item in values:
        name, _, raw = item.partition("=")
        if not raw.isdigit():
            raise ValueError(f"--limit takes NAME=POSITIVE_INTEGER, got {item!r}")
        limits[name] = int(raw)
    return limits


@projects.command("create")
@click.option("--name", required=True, help="Display name.")
@click.option("--plan", type=click.Choice([p.value for p in Plan]), default="free", show_default=True)
@click.option("--domain", "domains", multiple=True, help="Allowed hostname for /collect (repeatable).")
@click.option("--limit", "limits", multiple=True, help=f"Override NAME=N; names: {', '.join(LIMIT_NAMES)}.")
@json_option
@fails_cleanly
def projects_create(name: str, plan: str, domains: tuple[str, ...], limits: tuple[str, ...], as_json: bool) -> None:
    """Create a project (its events database is provisioned by the running worker or `migrate`)."""
    from openanalytics.projects.service import create_project

    db = _control_plane()
    with db.session() as session:
        data = _project_dict(create_project(session, name, plan, list(domains), _parse_limits(limits)))
    _emit(as_json, data, lambda p: "created " + _project_line(p))


@projects.command("list")
@json_option
def projects_list(as_json: bool) -> None:
    """List active projects."""
    from openanalytics.projects.service import list_projects

    db = _control_plane()
    with db.session() as session:
        data = [_project_dict(p) for p in list_projects(session)]
    _emit(as_json, data, lambda rows: "\n".join(map(_project_line, rows)) or "no projects")


# -- keys ------------------------------------------------------------------


def _key_dict(key) -> dict[str, Any]:
    from openanalytics.auth.schemas import KeyOut

    return KeyOut.of(key).model_dump(mode="json")


def _key_line(k: dict[str, Any]) -> str:
    state = "revoked" if k["revoked_at"] else "active"
    return f"{k['id']}  {k['prefix']}…  {k['name']}  {state}  scopes={','.join(k['scopes'])}"


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--project", "project_id", required=True, help="Project id.")
@click.option("--name", default="default", show_default=True)
@click.option("--scope", "scopes", multiple=True, help="Scope (repeatable); default: projects:read stats:read events:write.")
@json_option
@fails_cleanly
def keys_create(project_id: str, name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key; its secret is printed this once."""
    from openanalytics.auth.keys import issue_key
    from openanalytics.projects.service import get_project

    db = _control_plane()
    with db.session() as session:
        project = get_project(session, project_id)
        if project is None or not project.active:
            raise click.ClickException(f"no such project: {project_id}")
        issued = issue_key(session, project_id, name, list(scopes))
        data = {**_key_dict(issued.key), "secret": issued.secret}
    _emit(as_json, data, lambda k: f"{_key_line(k)}\n\n{k['secret']}\n\nStore this secret now; it is not shown again.")


@keys.command("list")
@click.option("--project", "project_id", required=True, help="Project id.")
@json_option
def keys_list(project_id: str, as_json: bool) -> None:
    """List a project's keys (never their secrets)."""
    from openanalytics.auth.keys import list_keys

    db = _control_plane()
    with db.session() as session:
        data = [_key_dict(k) for k in list_keys(session, project_id)]
    _emit(as_json, data, lambda rows: "\n".join(map(_key_line, rows)) or "no keys")


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key; every API process refuses it within a second."""
    from openanalytics.auth.keys import revoke_key

    db = _control_plane()
    with db.session() as session:
        key = revoke_key(session, key_id)
        if key is None:
            raise click.ClickException(f"no such key: {key_id}")
        data = _key_dict(key)
    _announce_key_change()
    _emit(as_json, data, lambda k: "revoked " + _key_line(k))


def _announce_key_change() -> None:
    """Running API processes drop cached keys now (with an in-process Redis they expire within a second)."""
    settings = _settings()
    if not settings.redis_url:
        return
    from openanalytics.auth.principals import announce_change
    from openanalytics.stores.redis import make_redis

    async def announce() -> None:
        redis = make_redis(settings.redis_url)
        try:
            await announce_change(redis)
        finally:
            await redis.aclose()

    asyncio.run(announce())


if __name__ == "__main__":
    sys.exit(main())
