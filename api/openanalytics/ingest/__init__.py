"""Ingest: turning browser hits and server-side events into rows on the event stream."""
