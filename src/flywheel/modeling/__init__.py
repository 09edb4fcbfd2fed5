"""Training and hyper-parameter tuning (the networks are the task's: `flywheel.tasks.networks`).

`training.train` runs the training loop (its parts in `reproducibility`,
`checkpoints`, `distributed`, `loaders`, `loop`, `early_stopping`,
`run_logging` and `export`); `tuning` searches hyper-parameters with Optuna,
each trial a training run.
"""
