"""Webhooks: tenant-registered HTTP callbacks and their delivery."""
