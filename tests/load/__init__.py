"""Load drivers: they check the service under load, where benchmarks measure it.

* `tests.load.fuzz` (`make fuzz`): schemathesis against the OpenAPI spec (a hook,
  `fuzz_hooks`, mixes in JSON arrays that fit the model), then valid and
  corrupted image files, valid arrays at every edge value and multipart edge
  cases (`fuzz_bodies`, sent raw: `raw_http`); fails on any 5xx, a valid array
  not served or an edge case not refused.
* `tests.load.soak` (`make soak`): minutes of steady load; fails on any
  unexpected answer or on resident memory growth.

Each runs as a script (`python -m tests.load.fuzz`) against a server of a
model it trains into a temporary store (`flywheel.demo.sandbox`), and its
`run_*` function runs from a test against a test's server
(`tests/integration/test_serving.py`).
"""
