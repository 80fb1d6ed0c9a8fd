"""Optuna studies over experiment configs: where charlstm creates, runs and changes them.

- ``spec``: study files (``sweeps/*.yaml``), validated with the config's typed machinery, and
  ``trial_config`` (a trial's config).
- ``store``: the storage (a journal file kept readable through torn writes, or an RDB with
  heartbeats), sampler and pruner, counting and re-queueing trials, the leaderboard.
- ``runs``: the study's MLflow parent run, and a trial's run ending as its trial ended.
- ``recovery``: trials whose worker is gone, failed with the reason and queued to resume.
- ``kinds``: what a trial is (search, final, check, confirm) and how each trains and is tagged.
- ``study``: a study set up or resumed, its baseline, grid and final queued, what it needs
  next, and finished (the summary and the registered best).
- ``objective``: the function Optuna calls for one trial.
- ``workers``: worker processes, the sweep that supervises them, pausing on a signal.
- ``confirm``: the top trials again over fresh seeds; ``launch``: workers on a cluster.

Every trial is a child MLflow run of one parent run per study. The read side (``analysis``,
``report``, ``doctor``, ``status``) uses ``spec``, ``store`` and ``runs``, never what runs a
study; so this file imports nothing (importing a submodule runs it).
"""
