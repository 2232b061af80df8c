"""The worker side of a job's life, one module per pool: ``orchestration`` (start, cancel,
the reconciler), ``distribution`` (fan-out, fan-in, finalize) and ``compute`` (claim, run a
plugin, finish), over the plan of a job's tasks (``plan``).

The states, the transitions, their effects and the message that moves a job on are not
here but in :mod:`celeriac.platform.jobs.lifecycle`, which the API shares; every statement
is in :mod:`celeriac.platform.jobs.repository`. Only ``compute`` imports pandas: the
orchestration and distribution pools compute nothing. See ``docs/job-lifecycle.md``.
"""
