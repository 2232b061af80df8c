"""Celeriac's benchmarks: thin scenarios, each run as ``python -m bench.<name>`` from the
repository root, on one kit (:mod:`bench.kit`). Not part of the product or the test run;
bench/README.md says what each compares and its last figures."""
