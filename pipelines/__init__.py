"""flywheel's Kubeflow pipelines, composed from `components/` (docs/architecture.md).

`training` (stages 3–6: validate → train → evaluate → promote if blessed) and
`flywheel` (stages 8–10: drift → curate → label → new data version, then the
training pipeline); `catalog` names them for the CLI; `arguments` builds a
run's arguments from params.yaml; `local` runs a pipeline on the KFP local
runner; `cluster` sets images, GPUs, Secrets and submits to a KFP endpoint.
"""
