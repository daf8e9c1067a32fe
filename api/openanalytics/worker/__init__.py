"""The worker: drains the ingest stream into ClickHouse and keeps projects provisioned."""
