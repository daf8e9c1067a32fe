"""Plans and the limits they give a project.

A project's effective limits are its plan's defaults with the project's overrides on top;
they are computed when the project is written and stored on the row, so the API pods only
read them. The plan defaults below can be replaced by a JSON file (`OA_PLANS_FILE`, the
Helm chart's plans ConfigMap); `openanalytics migrate` re-applies them to every project.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path


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
    # Tracked events per calendar month: reported by /usage, never enforced by dropping events.
    monthly_events: int


PLAN_LIMITS: dict[Plan, Limits] = {
    Plan.free: Limits(60, 90, 300, 3_000, 100_000),
    Plan.pro: Limits(600, 365, 600, 30_000, 1_000_000),
    Plan.business: Limits(6_000, 730, 1_200, 300_000, 10_000_000),
    # Enterprise starts from Business and is expected to carry overrides.
    Plan.enterprise: Limits(6_000, 730, 1_200, 300_000, 10_000_000),
}

LIMIT_NAMES = tuple(Limits.__dataclass_fields__)
MAX_RETENTION_DAYS = 3650


class PlansFileError(ValueError):
    """The plans file is unreadable or names an unknown plan or limit."""


def _check_limit(name: str, value: object) -> int:
    if name not in LIMIT_NAMES:
        raise ValueError(f"unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"limit {name!r} must be a positive integer")
    if name == "retention_days" and value > MAX_RETENTION_DAYS:
        raise ValueError(f"limit 'retention_days' is at most {MAX_RETENTION_DAYS}")
    return value


def load_plans(path: Path | str) -> dict[Plan, Limits]:
    """Plan definitions from a JSON object {plan: {limit: value}}; what it omits keeps the default."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlansFileError(f"cannot read plans file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PlansFileError(f"plans file {path}: expected an object of plans")
    plans = dict(PLAN_LIMITS)
    for name, limits in data.items():
        if name not in Plan.__members__:
            raise PlansFileError(f"plans file {path}: unknown plan {name!r}; known: {', '.join(Plan)}")
        if not isinstance(limits, dict):
            raise PlansFileError(f"plans file {path}: plan {name!r} must be an object of limits")
        try:
            plans[Plan(name)] = replace(plans[Plan(name)], **{k: _check_limit(k, v) for k, v in limits.items()})
        except ValueError as exc:
            raise PlansFileError(f"plans file {path}: plan {name!r}: {exc}") from None
    return plans


@lru_cache
def _plans_from(path: str | None) -> dict[Plan, Limits]:
    return load_plans(path) if path else PLAN_LIMITS


def configured_plans(settings=None) -> dict[Plan, Limits]:
    """The plans of `settings` (default: this process's): OA_PLANS_FILE if set, else the defaults."""
    from openanalytics.config import get_settings

    path = (settings or get_settings()).plans_file
    return _plans_from(str(path) if path else None)


def effective_limits(
    plan: Plan | str, overrides: dict[str, int] | None = None, plans: dict[Plan, Limits] | None = None
) -> Limits:
    """The plan's limits with `overrides` (only known, positive values) applied."""
    values = asdict((plans or configured_plans())[Plan(plan)])
    for name, value in (overrides or {}).items():
        values[name] = _check_limit(name, value)
    return Limits(**values)
