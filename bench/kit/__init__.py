"""What every benchmark shares, one module per concern:

- :mod:`bench.kit.cli`: exit codes, signals, progress lines (``BenchError``, ``run_main``);
- :mod:`bench.kit.procs`: processes in sessions of their own, stopped by process group
  (also when the bench is SIGKILLed), ports, py-spy;
- :mod:`bench.kit.env`: scratch directories, the bench databases and Redis dbs, the
  ``celeriac`` command, a whole platform environment (:func:`bench.kit.env.environment`);
- :mod:`bench.kit.machine`: machine load, CPU seconds per process group, peak RSS;
- :mod:`bench.kit.report`: percentiles, tables and the one-line summaries ``make bench``
  collects;
- :mod:`bench.kit.queueing`: the no-op compute worker the queueing benches drive.
"""
