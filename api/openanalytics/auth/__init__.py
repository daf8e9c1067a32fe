"""API keys, scopes and the Bearer authentication of /v1."""
