"""Usage: the billable facts the platform records, and billing's reads of them."""
