"""The server-side event model (strict) shared with `/collect` (lenient: failures are dropped)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import orjson
import pycountry
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from openanalytics.ingest.urls import has_control, is_absolute_http
from openanalytics.text import StoredText

MAX_PROPERTIES = 50
MAX_PROPERTY_KEY = 100
MAX_PROPERTY_VALUE = 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies)


def read_json(body: bytes | str) -> Any:
    """A request's JSON. orjson reads an integer past 64 bits as a float, which would keep a property
    inexactly and without a word: where it gave such a float (integral, past 2**63), the body is read
    again by the standard library, which keeps the integer whole, so the 64-bit check can refuse it.
    Raises orjson.JSONDecodeError."""
    data = orjson.loads(body)
    if _big_float_property(data):
        data = json.loads(body)
    return data


def _big_float_property(data: Any) -> bool:
    for item in data if isinstance(data, list) else (data,):
        properties = item.get("properties") if isinstance(item, dict) else None
        if isinstance(properties, dict) and any(
                # INT64_MIN itself too: integers just below it read as that float
                type(value) is float and value.is_integer() and not INT64_MIN < value <= INT64_MAX
                for value in properties.values()):
            return True
    return False


class EventType(StrEnum):
    pageview = "pageview"
    event = "event"
    identify = "identify"
    conversion = "conversion"


PropertyValue = str | int | float | bool


class EventIn(BaseModel):
    """One tracked event as a backend sends it (`POST /v1/projects/{id}/events`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # The cross-field rules of _consistent(), for clients that validate against the schema.
            "allOf": [
                {
                    "if": {"properties": {"event_type": {"enum": ["event", "conversion"]}}},
                    "then": {"required": ["event_name"], "properties": {"event_name": {"type": "string"}}},
                },
                {
                    "if": {"properties": {"event_type": {"const": "identify"}}},
                    "then": {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                },
                {
                    "if": {"required": ["revenue"], "properties": {"revenue": {"not": {"type": "null"}}}},
                    "then": {
                        "required": ["currency"],
                        "properties": {"event_type": {"const": "conversion"}, "currency": {"type": "string"}},
                    },
                },
                {
                    "if": {"required": ["currency"], "properties": {"currency": {"not": {"type": "null"}}}},
                    "then": {"required": ["revenue"], "properties": {"revenue": {"not": {"type": "null"}}}},
                },
            ],
            "examples": [
                {
                    "event_type": "conversion",
                    "event_name": "purchase",
                    "user_id": "sha256_hash_of_user_id",
                    "url": "https://example.com/thanks",
                    "properties": {"plan": "pro"},
                    "revenue": 49.99,
                    "currency": "USD",
                    "timestamp": 1747000000000,
                }
            ]
        },
    )

    event_type: EventType = Field(description="What happened.")
    event_name: Annotated[str, Field(min_length=1, max_length=200), StoredText] | None = Field(
        default=None, description="Required for `event` and `conversion`; case-sensitive, snake_case recommended."
    )
    user_id: Annotated[str, Field(min_length=1, max_length=256), StoredText] | None = Field(
        default=None, description="An already hashed or pseudonymous id. Never a raw email address."
    )
    url: Annotated[str, Field(max_length=2048)] | None = Field(default=None, description="Absolute http(s) URL.")
    properties: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Flat object of at most {MAX_PROPERTIES} keys; values are strings, numbers or booleans.",
    )
    revenue: Annotated[Decimal, Field(max_digits=18, decimal_places=4)] | None = Field(
        default=None, description="Conversion value (with `currency`)."
    )
    currency: str | None = Field(default=None, description="ISO 4217 code, e.g. USD.", examples=["USD"])
    timestamp: StrictInt | None = Field(
        default=None, description="Unix time in milliseconds; defaults to the time the event is received."
    )

    @field_validator("url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not is_absolute_http(value):
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("user_id")
    @classmethod
    def _printable_user_id(cls, value: str | None) -> str | None:
        # Every id stored must be reachable as one path segment of the privacy routes.
        if value is not None and has_control(value):
            raise ValueError("must not contain control characters (tab, line breaks, NUL, ...)")
        return value

    @field_validator("properties")
    @classmethod
    def _flat_properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_PROPERTIES:
            raise ValueError(f"at most {MAX_PROPERTIES} properties are allowed, got {len(value)}")
        for key, item in value.items():
            if not key or len(key) > MAX_PROPERTY_KEY:
                raise ValueError(f"property names are 1 to {MAX_PROPERTY_KEY} characters")
            if not isinstance(item, (str, int, float, bool)) or (isinstance(item, float) and not math.isfinite(item)):
                raise ValueError(f"property {key!r} must be a string, number or boolean (no objects, arrays or null)")
            if isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX:  # read exactly: see read_json
                raise ValueError(f"property {key!r} is outside the 64-bit integer range; send it as a string")
            if isinstance(item, str) and len(item) > MAX_PROPERTY_VALUE:
                raise ValueError(f"property {key!r} is longer than {MAX_PROPERTY_VALUE} characters")
            if "\x00" in key or isinstance(item, str) and "\x00" in item:
                raise ValueError(f"property {key!r} must not contain a NUL character")
        return value

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str | None) -> str | None:
        if value is not None and value not in CURRENCIES:
            raise ValueError("must be an ISO 4217 currency code in upper case, e.g. USD")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "EventIn":
        if self.event_type in (EventType.event, EventType.conversion) and not self.event_name:
            raise ValueError(f"event_name is required for event_type '{self.event_type.value}'")
        if self.event_type is EventType.identify and not self.user_id:
            raise ValueError("user_id is required for event_type 'identify'")
        if (self.revenue is None) != (self.currency is None):
            raise ValueError("revenue and currency go together")
        if self.revenue is not None and self.event_type is not EventType.conversion:
            raise ValueError("revenue is only accepted on conversion events")
        return self


class EventsQueued(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"queued": True, "count": 1, "event_ids": ["4e8c6f69-0722-465a-aa93-4f45e4bd5cfe"]}]}
    )

    queued: bool = Field(True, description="Always true: the events are on the ingest stream.")
    count: int = Field(description="How many events were queued.", examples=[1])
    event_ids: list[str] = Field(description="Ids given to the queued events, in request order.")
