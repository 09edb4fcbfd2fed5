"""flywheel's Kubeflow components, one per pipeline step (see DESIGN.md).

Each body imports `flywheel.steps` and calls one function of it; the base image
is `flywheel.env.DEFAULT_IMAGE` (pipelines set `flywheel.env.component_image()`
per task). The monitoring issue fills in `monitor`, `curate`, `label` and
`update_dataset`, whose library functions raise `StageNotImplementedError` today.
"""
