"""flywheel's Kubeflow components, one per pipeline step (see DESIGN.md).

Each body imports `flywheel.workflows` and calls one function of it; the base image
is `flywheel.env.DEFAULT_IMAGE` (pipelines set `flywheel.env.component_image()`
per task): validate, train, evaluate, promote (the `training` pipeline) and
monitor, curate, label, update_dataset (the `flywheel` pipeline in front of it).
"""
