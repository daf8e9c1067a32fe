"""Query filters: `filter=<dimension><operator><value>`, repeated; all of them must hold.

Operators (as in Google Analytics): `==` equals, `!=` does not equal, `=@` contains, `!@`
does not contain. The dimension is one of catalog.DIMENSIONS or `property:<key>` for an
event property. Values are compared as text and always bound as parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Query

from openanalytics.errors import BadRequest
from openanalytics.query.catalog import DIMENSIONS, EVENT_DIMENSIONS, SESSION_DIMENSIONS

MAX_FILTERS = 10
_FILTER = re.compile(r"^(?P<name>[a-z_]+|property:[^=!@]{1,100})(?P<op>==|!=|=@|!@)(?P<value>.{0,500})$", re.S)
_SQL = {"==": "{x} = {v}", "!=": "{x} != {v}", "=@": "position({x}, {v}) > 0", "!@": "position({x}, {v}) = 0"}

Filters = Annotated[list[str] | None, Query(
    alias="filter",
    description=(
        "Repeatable; all must hold. `<dimension><op><value>` with `==` equals, `!=` not equals, "
        "`=@` contains, `!@` does not contain. The dimension is any breakdown dimension or "
        "`property:<key>`. Example: `filter=country==NL&filter=path=@/blog`."
    ),
    examples=[["country==NL", "property:plan==pro"]],
)]


@dataclass(frozen=True)
class Filter:
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse(texts: list[str] | None) -> list[Filter]:
    found = []
    for text in texts or []:
        match = _FILTER.match(text)
        if match is None:
            raise BadRequest(
                f"filter {text[:80]!r} is not <dimension><op><value> with op ==, !=, =@ or !@", "invalid_filter")
        name = match["name"]
        if not name.startswith("property:") and name not in DIMENSIONS:
            raise BadRequest(f"unknown filter dimension {name!r}; allowed: {', '.join(DIMENSIONS)}, property:<key>",
                             "unknown_dimension")
        found.append(Filter(name, match["op"], match["value"]))
    if len(found) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} filters", "invalid_filter")
    return found


def where(filters: list[Filter], table: str, range_sql: str) -> tuple[str, dict[str, str]]:
    """SQL conditions (joined by AND, '1' when none) and their parameters."""
    conditions, params = [], {}
    for n, f in enumerate(filters):
        value = f"{{f{n}:String}}"
        params[f"f{n}"] = f.value
        if f.name.startswith("property:"):
            params[f"k{n}"] = f.name.removeprefix("property:")
            conditions.append(_SQL[f.op].format(x=f"properties[{{k{n}:String}}]", v=value))
        elif f.name in EVENT_DIMENSIONS:
            conditions.append(_SQL[f.op].format(x=EVENT_DIMENSIONS[f.name], v=value))
        else:  # the session's entry or exit page, over all its events in the range
            test = _SQL[f.op].format(x=SESSION_DIMENSIONS[f.name], v=value)
            conditions.append(
                f"session_id IN (SELECT session_id FROM {table} WHERE {range_sql} AND session_id != 0 "
                f"GROUP BY session_id HAVING {test})")
    return " AND ".join(conditions) or "1", params
