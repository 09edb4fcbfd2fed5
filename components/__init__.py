"""flywheel's Kubeflow components, one per pipeline step (docs/architecture.md).

Each body imports `flywheel.workflows` and calls one function of it (after
`resolve_params` has read the run's parameters); the base image is
`flywheel.workflows.DEFAULT_IMAGE` (pipelines set `flywheel.env.component_image()`
per task). A component imports nothing else of flywheel. The steps: validate,
train, evaluate, promote (the `training` pipeline) and monitor, curate, label,
update_dataset (the `flywheel` pipeline in front of it).
"""
