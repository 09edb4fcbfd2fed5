"""The custom resources (Katib Experiment, PyTorchJob) validated against infra/k8s/schemas/.

The schema files cite the upstream sources they were written from. Validation
is strict, as `kubectl apply --validate=strict` is with a structural CRD
schema, and the pod templates embedded in a custom resource are validated as
the core/v1 objects they are, with kubernetes-validate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import yaml

from tests.support.k8s import K8S, Doc, ident, validate_builtin
from tests.support.katib import substitute_trial_parameters

CUSTOM_SCHEMAS = {
    ("kubeflow.org/v1beta1", "Experiment"): K8S
    / "schemas"
    / "katib-experiment-v1beta1.schema.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): K8S / "schemas" / "pytorchjob-v1.schema.yaml",
}


def strict(schema: Any) -> Any:
    """A copy in which every object with declared properties rejects undeclared ones.

    What `kubectl apply --validate=strict` does with a structural CRD schema:
    a misspelt field is an error instead of being pruned in silence.

    >>> strict({"type": "object", "properties": {"a": {"type": "string"}}})["additionalProperties"]
    False
    >>> open_schema = {"properties": {}, "x-kubernetes-preserve-unknown-fields": True}
    >>> "additionalProperties" in strict(open_schema)
    False
    """
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def embedded_objects(
    schema: Doc, instance: Any, root: Doc, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str, tuple[str | int, ...], Any]]:
    """`(marker, path, value)` of every value the schema marks `x-flywheel-embedded`."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    if "x-flywheel-embedded" in schema:
        yield schema["x-flywheel-embedded"], path, instance
        return
    if isinstance(instance, dict):
        declared = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in declared:
                yield from embedded_objects(declared[key], value, root, (*path, key))
            elif isinstance(extra, dict):
                yield from embedded_objects(extra, value, root, (*path, key))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            yield from embedded_objects(schema["items"], value, root, (*path, i))


def validate_custom(doc: Doc) -> list[str]:
    """Errors of a Katib Experiment or PyTorchJob against its schema in infra/k8s/schemas/.

    Embedded pod templates are validated as core/v1 PodTemplateSpecs, the
    Experiment's trial spec as the Kubernetes object it is once Katib has
    substituted the trial parameters.
    """
    schema = yaml.safe_load(CUSTOM_SCHEMAS[(doc["apiVersion"], doc["kind"])].read_text())
    validator = jsonschema.Draft202012Validator(strict(schema))
    errors = [
        f"{ident(doc)}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in validator.iter_errors(doc)
    ]
    subject = substitute_trial_parameters(doc) if doc["kind"] == "Experiment" else doc
    for marker, path, value in embedded_objects(schema, subject, schema):
        where = f"{ident(doc)}: {'.'.join(map(str, path))}"
        if marker == "PodTemplateSpec":
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "embedded"},
                "template": value,
            }
            errors += [f"{where}: {e}" for e in validate_builtin(wrapped)]
        elif marker == "KubernetesObject":
            errors += [f"{where}: {e}" for e in validate_builtin(value)]
        else:
            errors.append(f"{where}: unknown embedded marker {marker!r}")
    return errors
