"""The fuzz's valid `/predict_arrays` bodies pass the service's own checks, in every layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from serving.decoding import arrays_to_unit
from tests.load.fuzz_bodies import (
    FILLS,
    LAYOUTS,
    SCALES,
    ArrayInput,
    array_bodies,
    valid_array_bodies,
)

INPUTS = [ArrayInput(16, 1, 255, 8), ArrayInput(8, 3, 255, 4), ArrayInput(12, 1, 16, 5)]


def _served(spec: ArrayInput, body: dict[str, object]) -> np.ndarray:
    images = np.asarray(body["images"])
    return arrays_to_unit(images, spec.size, body.get("scale", "auto"), spec.channels, spec.white)


@pytest.mark.parametrize("spec", INPUTS, ids=["grey", "rgb", "white-16"])
def test_every_valid_body_passes_validation(spec: ArrayInput) -> None:
    combos = len(LAYOUTS[spec.channels]) * len(SCALES) * len(FILLS)
    bodies = valid_array_bodies(spec, combos + 10, seed=0)
    for body in bodies:
        batch = _served(spec, body)  # raises RequestError if the service would refuse it
        assert batch.shape[1:] == (spec.channels, spec.size, spec.size)
        assert 1 <= len(batch) <= spec.max_images
    assert {len(b["images"]) for b in bodies} >= {spec.max_images}
    assert {b.get("scale") for b in bodies} == set(SCALES)


@settings(max_examples=60, deadline=None)
@given(body=array_bodies(INPUTS[2]))
def test_the_hooks_strategy_makes_valid_bodies(body: dict[str, object]) -> None:
    assert _served(INPUTS[2], body).dtype == np.float32
