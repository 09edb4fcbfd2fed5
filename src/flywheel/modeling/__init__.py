"""Training and hyper-parameter tuning: the loop, checkpoints, export, Optuna studies."""
