"""flywheel: the data flywheel of a vision AI service, as one closed, reproducible loop."""

__version__ = "0.1.0"
