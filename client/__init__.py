"""Helpers for Celeriac's tenants (``celeriac.client``): code that runs on their side."""
