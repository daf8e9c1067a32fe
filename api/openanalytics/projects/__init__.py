"""Projects: tenants, their plans and effective limits."""
