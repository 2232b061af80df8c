"""The worker's Celery app with the band-first dispatcher (``bench/band_first.py``): what
the benches start, as ``celery -A bench.band_first_app``, to measure the old design beside the
new one in the same run."""

from bench.band_first import use_design

use_design("band-first")

from celeriac.workers.celery_app import app  # noqa: E402

__all__ = ["app"]
