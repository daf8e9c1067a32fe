"""Plans and the limits they give a project.

A project's effective limits are its plan's defaults with the project's overrides on top;
they are computed when the project is written and stored on the row, so the API pods only
read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class Plan(StrEnum):
    free = "free"
    pro = "pro"
    business = "business"
    enterprise = "enterprise"


@dataclass(frozen=True)
class Limits:
    api_requests_per_minute: int
    retention_days: int
    collect_per_ip_per_minute: int
    collect_per_site_per_minute: int


PLAN_LIMITS: dict[Plan, Limits] = {
    Plan.free: Limits(60, 90, 300, 3_000),
    Plan.pro: Limits(600, 365, 600, 30_000),
    Plan.business: Limits(6_000, 730, 1_200, 300_000),
    # Enterprise starts from Business and is expected to carry overrides.
    Plan.enterprise: Limits(6_000, 730, 1_200, 300_000),
}

LIMIT_NAMES = tuple(Limits.__dataclass_fields__)


def effective_limits(plan: Plan | str, overrides: dict[str, int] | None = None) -> Limits:
    """The plan's limits with `overrides` (only known, positive values) applied."""
    values = asdict(PLAN_LIMITS[Plan(plan)])
    for name, value in (overrides or {}).items():
        if name not in values:
            raise ValueError(f"unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"limit {name!r} must be a positive integer")
        values[name] = value
    return Limits(**values)
