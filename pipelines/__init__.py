"""flywheel pipelines (see DESIGN.md)."""
