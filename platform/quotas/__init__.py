"""Quotas: per-tenant limits (plan defaults, admin overrides), rate limits and their checks."""
