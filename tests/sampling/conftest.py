"""Fixtures of the sampling tests (shared with tests/decoding): see tests/decoding_models.py."""

from decoding_models import lm, one_thread  # noqa: F401  (fixtures: one_thread is autouse)
