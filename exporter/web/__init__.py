"""The HTTP side (placeholder docstring, rewritten below)."""
