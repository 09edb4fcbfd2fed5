#!/bin/sh
# Render one kustomization of infra/k8s (an overlay of services, or a jobs
# variant) with the choices of the cluster it goes to, on stdout:
#   infra/k8s/render.sh overlays/gpu
#   IMAGE_REPO=registry.example/ml STORAGE_CLASS=standard-rwo infra/k8s/render.sh overlays/gpu
# IMAGE_REPO: the registry `make images` pushed to; it renames the three
# flywheel images and keeps their tags (default ghcr.io/flywheel-ml).
# STORAGE_CLASS: storageClassName of every PersistentVolumeClaim and StatefulSet
# volume claim template (empty: the cluster's default class).
# DATA_VERSION: the data version (DVC hash) the jobs train on, FLYWHEEL_DATA_VERSION
# of the PyTorchJob and the Katib trials (empty: their default, `latest`, the
# version recorded next to the DVC remote); jobs/ only.
# The Makefile's render, deploy, tune and train-distributed targets call it; it
# writes a kustomization that points at the chosen one into a temporary folder
# beside it (kustomize takes relative paths only; removed on exit) and renders
# that with kubectl's built-in kustomize (no cluster needed).
set -eu
target=${1:?usage: render.sh overlays/<overlay> | jobs/<variant>}
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$here/$target/kustomization.yaml" ]; then
  echo "render.sh: no kustomization infra/k8s/$target" >&2
  exit 1
fi
default=ghcr.io/flywheel-ml
repo=${IMAGE_REPO:-$default}
work=$(mktemp -d "$here/.render.XXXXXX")
trap 'rm -rf "$work"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../$target"
  echo "images:"
  for image in flywheel flywheel-tracking flywheel-serving; do
    echo "  - name: $default/$image"
    echo "    newName: ${repo%/}/$image"
  done
  patch_versions=
  [ -n "${DATA_VERSION:-}" ] && [ "${target%%/*}" = jobs ] && patch_versions=1
  if [ -n "${STORAGE_CLASS:-}" ] || [ -n "$patch_versions" ]; then
    echo "patches:"
  fi
  if [ -n "${STORAGE_CLASS:-}" ]; then
    for kind in PersistentVolumeClaim StatefulSet; do
      path=/spec/storageClassName
      [ "$kind" = StatefulSet ] && path=/spec/volumeClaimTemplates/0/spec/storageClassName
      echo "  - target:"
      echo "      kind: $kind"
      echo "    patch: |-"
      echo "      - op: add"
      echo "        path: $path"
      echo "        value: \"$STORAGE_CLASS\""
    done
  fi
  if [ -n "$patch_versions" ]; then
    # FLYWHEEL_DATA_VERSION is env/0 of the training container of each job pod.
    pod=/spec/pytorchReplicaSpecs
    for path in $pod/Master/template/spec $pod/Worker/template/spec \
      /spec/trialTemplate/trialSpec/spec/template/spec; do
      kind=PyTorchJob
      case $path in /spec/trialTemplate/*) kind=Experiment ;; esac
      echo "  - target:"
      echo "      kind: $kind"
      echo "    patch: |-"
      echo "      - op: test"
      echo "        path: $path/containers/0/env/0/name"
      echo "        value: FLYWHEEL_DATA_VERSION"
      echo "      - op: replace"
      echo "        path: $path/containers/0/env/0/value"
      echo "        value: \"$DATA_VERSION\""
    done
  fi
} >"$work/kustomization.yaml"
"${KUBECTL:-kubectl}" kustomize "$work"
