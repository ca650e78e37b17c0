"""Prompt files and refusal markers (the marker lists live in ``refusal/``)."""
