"""Optuna studies over experiment configs: where charlstm creates, runs and changes them.

- ``spec``: study files (``sweeps/*.yaml``), validated with the config's typed machinery, and
  ``trial_config`` (a trial's config).
- ``store``: the storage (a journal file kept readable through torn writes, or an RDB with
  heartbeats), sampler and pruner, counting and re-queueing trials, the leaderboard.
- ``runs``: the study's MLflow parent run, and a trial's run ending as its trial ended.
- ``recovery``: trials whose worker is gone, failed with the reason and queued to resume.
- ``runner``: the objective, worker processes, the sweep that supervises them, pausing on a
  signal, and finishing (the summary and the registered best).

Every trial is a child MLflow run of one parent run per study. The read side (``analysis``,
``report``, ``doctor``) uses ``spec``, ``store`` and ``runs``, never the runner; so this file
imports nothing (importing a submodule runs it).
"""
