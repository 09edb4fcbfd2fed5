"""Evaluation gates and the MLflow Model Registry, against a real SQLite MLflow store.

The models are real pt2 (`torch.export`) MLflow models logged once for the
package (conftest.py): small rule-based classifiers that read a tiny hand-made
dataset exactly, each broken on chosen strata, so every accuracy (overall and
per slice) is known in advance. Each test works on its own registered model.

* test_evaluation_gates.py: real evaluations, the gates they pass or fail,
  promotion and rollback of evaluated versions, `flywheel evaluate`;
* test_promotion.py: registry-only, with hand-made blessings: aliases, errors,
  stale blessings, `flywheel models`, the registry lock;
* test_races.py: two real processes promoting different versions at the same
  instant, round after round, under both lock strategies.

A package (this file), so that the store's `scope="package"` means this folder.
"""
