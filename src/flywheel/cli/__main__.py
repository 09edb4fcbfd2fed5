"""`python -m flywheel.cli`: the command line, as the `flywheel` script runs it."""

from flywheel.cli import main

main()
