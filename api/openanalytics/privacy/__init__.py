"""Data-subject requests: a sanitized export of one user's events, and deletions that the
worker carries out and verifies (ClickHouse, the ingest stream, realtime and session state)."""
