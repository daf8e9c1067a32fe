"""Country, region and city from the full IP, with any MaxMind-format database (City or
Country; what the file lacks stays empty). The full IP is used here and nowhere else."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import maxminddb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    country: str = ""
    region: str = ""
    city: str = ""


NOWHERE = Place()


class Geo:
    def __init__(self, path: Path | None):
        self.reader = None
        if path is not None and path.is_file():
            self.reader = maxminddb.open_database(str(path))
        elif path is not None:
            log.warning("no geo database at %s: country, region and city stay empty", path)
        self.lookup = lru_cache(maxsize=50_000)(self._lookup)

    def _lookup(self, ip: str) -> Place:
        if self.reader is None or not ip:
            return NOWHERE
        try:
            record = self.reader.get(ip)
        except ValueError:
            return NOWHERE
        if not isinstance(record, dict):
            return NOWHERE
        # MaxMind City/Country layout, or the flat layout of the ip-location-db files.
        country = (record.get("country") or {}).get("iso_code") if isinstance(record.get("country"), dict) \
            else record.get("country_code", "")
        subdivisions = record.get("subdivisions") or []
        region = subdivisions[0].get("iso_code", "") if subdivisions else ""
        city = ((record.get("city") or {}).get("names") or {}).get("en", "")
        return Place(country or "", region or "", city or "")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
