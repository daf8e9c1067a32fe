"""Plan definitions from a file (the chart's plans ConfigMap), re-applied by `migrate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openanalytics.projects.models import Project
from openanalytics.projects.plans import PLAN_LIMITS, Plan, PlansFileError, load_plans
from openanalytics.projects.service import create_project, reapply_plans
from tests.test_processes import cli, clean_env

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "plans.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_plans_file_replaces_what_it_names(tmp_path):
    plans = load_plans(write(tmp_path, {"free": {"retention_days": 30, "monthly_events": 5000}}))
    assert plans[Plan.free].retention_days == 30 and plans[Plan.free].monthly_events == 5000
    assert plans[Plan.free].api_requests_per_minute == PLAN_LIMITS[Plan.free].api_requests_per_minute
    assert plans[Plan.pro] == PLAN_LIMITS[Plan.pro]


@pytest.mark.parametrize(("content", "complaint"), [
    ("{not json", "cannot read plans file"),
    ("[1, 2]", "expected an object of plans"),
    ({"gold": {"retention_days": 30}}, "unknown plan 'gold'"),
    ({"free": {"retention": 30}}, "unknown limit 'retention'"),
    ({"free": {"retention_days": 0}}, "must be a positive integer"),
    ({"free": {"retention_days": "30"}}, "must be a positive integer"),
    ({"free": {"retention_days": True}}, "must be a positive integer"),
    ({"free": {"retention_days": 4000}}, "at most 3650"),
    ({"free": 30}, "must be an object of limits"),
])
def test_a_bad_plans_file_is_refused_with_the_reason(tmp_path, content, complaint):
    with pytest.raises(PlansFileError, match=complaint):
        load_plans(write(tmp_path, content))
    with pytest.raises(PlansFileError, match="cannot read"):
        load_plans(tmp_path / "missing.json")


def test_reapplying_plans_keeps_overrides_and_reports_what_changed(embedded_backends, tmp_path):
    db, _ = embedded_backends
    with db.session() as session:
        plain = create_project(session, "plain", "free").id
        custom = create_project(session, "custom", "free", overrides={"retention_days": 400}).id
        pro = create_project(session, "pro", "pro").id
    plans = load_plans(write(tmp_path, {"free": {"retention_days": 30, "monthly_events": 5000}}))
    with db.session() as session:
        changed = reapply_plans(session, plans)
    assert plain in changed and custom in changed and pro not in changed
    with db.session() as session:
        assert (session.get(Project, plain).retention_days, session.get(Project, plain).monthly_events) == (30, 5000)
        assert (session.get(Project, custom).retention_days, session.get(Project, custom).monthly_events) == (400, 5000)
        assert session.get(Project, pro).retention_days == 365
        assert not set(reapply_plans(session, plans)) & {plain, custom, pro}  # idempotent


def test_migrate_applies_the_plans_file_and_follows_with_the_ttl(tmp_path):
    env = clean_env(OA_DATA_DIR=str(tmp_path / "data"))
    project = cli(env, "projects", "create", "--name", "Shop", "--plan", "free")
    assert project["limits"]["retention_days"] == 90 and project["limits"]["monthly_events"] == 100_000
    first = cli(env, "migrate")
    assert project["id"] in first["provisioned"] and first["plans_applied"] == []

    plans = write(tmp_path, {"free": {"retention_days": 45, "monthly_events": 2000}})
    done = cli({**env, "OA_PLANS_FILE": str(plans)}, "migrate")
    assert done["plans_applied"] == [project["id"]]
    assert done["provisioned"] == [project["id"]]  # the retention TTL follows the plan
    listed = cli({**env, "OA_PLANS_FILE": str(plans)}, "projects", "list")
    shown = next(p for p in (listed["projects"] if isinstance(listed, dict) else listed) if p["id"] == project["id"])
    assert shown["limits"]["retention_days"] == 45 and shown["limits"]["monthly_events"] == 2000
    # New projects take the file's plan at once.
    again = cli({**env, "OA_PLANS_FILE": str(plans)}, "projects", "create", "--name", "Blog", "--plan", "free")
    assert again["limits"]["retention_days"] == 45


async def test_usage_reports_the_monthly_quota(client, make_tenant):
    tenant = make_tenant(plan="pro")
    body = (await client.get(f"/v1/projects/{tenant.id}/usage", headers=tenant.headers)).json()
    assert body["monthly_quota"] == 1_000_000
    project = (await client.get(f"/v1/projects/{tenant.id}", headers=tenant.headers)).json()
    assert project["limits"]["monthly_events"] == 1_000_000
