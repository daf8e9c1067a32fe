from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from openanalytics.projects.models import Project
from openanalytics.projects.plans import Plan


class LimitsOut(BaseModel):
    api_requests_per_minute: int = Field(description="Per API key.")
    retention_days: int
    collect_per_ip_per_minute: int
    collect_per_site_per_minute: int
    monthly_events: int = Field(description="Monthly quota of tracked events (reported by /usage, not enforced).")


PROJECT_EXAMPLE = {
    "id": "prj_3f9a1c0b7d2e4a65",
    "name": "My shop",
    "site_id": "site_8c1d2e3f4a5b6c7d",
    "plan": "business",
    "domains": ["example.com"],
    "limits": {
        "api_requests_per_minute": 6000,
        "retention_days": 730,
        "collect_per_ip_per_minute": 1200,
        "collect_per_site_per_minute": 300000,
        "monthly_events": 10000000,
    },
    "created_at": "2026-11-26T14:35:50.034703Z",
}


class ProjectOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PROJECT_EXAMPLE]})

    id: str = Field(examples=["prj_3f9a1c0b7d2e4a65"])
    name: str
    site_id: str = Field(description="Public id the tracker sends to /collect.", examples=["site_8c1d2e3f4a5b6c7d"])
    plan: Plan
    domains: list[str] = Field(description="Allowed hostnames for /collect; empty allows any.")
    limits: LimitsOut
    created_at: datetime

    @classmethod
    def of(cls, project: Project) -> "ProjectOut":
        return cls(
            id=project.id,
            name=project.name,
            site_id=project.site_id,
            plan=Plan(project.plan),
            domains=list(project.domains),
            limits=LimitsOut(
                api_requests_per_minute=project.api_requests_per_minute,
                retention_days=project.retention_days,
                collect_per_ip_per_minute=project.collect_per_ip_per_minute,
                collect_per_site_per_minute=project.collect_per_site_per_minute,
                monthly_events=project.monthly_events,
            ),
            created_at=project.created_at,
        )


class ProjectList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"projects": [PROJECT_EXAMPLE]}]})

    projects: list[ProjectOut] = Field(description="The projects this API key can reach.")
