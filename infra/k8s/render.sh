#!/bin/sh
# Render one kustomization of infra/k8s (an overlay of services, or a jobs
# variant) with the choices of the cluster it goes to, on stdout:
#   infra/k8s/render.sh overlays/gpu
#   IMAGE_REPO=registry.example/ml STORAGE_CLASS=standard-rwo infra/k8s/render.sh overlays/gpu
# IMAGE_REPO: the registry `make images` pushed to; it renames the three
# flywheel images and keeps their tags (default ghcr.io/flywheel-ml).
# STORAGE_CLASS: storageClassName of every PersistentVolumeClaim and StatefulSet
# volume claim template (empty: the cluster's default class).
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
  if [ -n "${STORAGE_CLASS:-}" ]; then
    echo "patches:"
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
} >"$work/kustomization.yaml"
"${KUBECTL:-kubectl}" kustomize "$work"
