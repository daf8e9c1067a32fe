"""Provisioning: making a project's stores real. Shared by the CLI, the worker and the operator."""
