"""Everything that exists only to run the demo: the synthetic collector and
renderer, the traffic simulator, the oracle annotator, the local server runner
and the closed-loop driver. Product code never imports this package (an
import-linter contract checks it); the CLI, the composition root, does.
"""
