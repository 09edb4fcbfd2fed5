"""flywheel serving (see DESIGN.md)."""
