"""schemathesis hooks of the fuzz (`tests.load.fuzz`): `/predict_arrays` bodies that reach
the model.

The spec can say only that `images` is an array of numbers, so the bodies
schemathesis generates are almost all refused by the shape check. This hook
lets Hypothesis replace each with a body that passes validation
(`tests.load.fuzz_bodies.array_bodies`), so the fuzz drives the model path too.
schemathesis's CLI loads it from `SCHEMATHESIS_HOOKS` (`tests.load.fuzz.run_fuzz`
sets it, with the served model's input in `ARRAY_INPUT_ENV`); without that
variable the hook changes nothing.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

from flywheel.serving_api import PREDICT_ARRAYS_PATH
from tests.load.fuzz_bodies import ArrayInput, array_bodies

SPEC = ArrayInput.from_env()


@schemathesis.hook.apply_to(path=PREDICT_ARRAYS_PATH, method="POST")  # type: ignore[attr-defined]
def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
    """The generated body, or one the model takes (Hypothesis picks)."""
    if SPEC is None:
        return st.just(body)
    return st.one_of(st.just(body), array_bodies(SPEC))
