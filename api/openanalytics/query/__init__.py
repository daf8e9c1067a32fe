"""Query: the numbers tenants read, always through allow-listed dimensions and bound parameters."""
