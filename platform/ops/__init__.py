"""Operator views: queue backlogs."""
