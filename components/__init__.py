"""flywheel components (see DESIGN.md)."""
