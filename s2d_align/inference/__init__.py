"""Inference: report generation from a finished run folder (a split, or new images)."""
