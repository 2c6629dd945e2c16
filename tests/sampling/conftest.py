"""Fixtures of the sampling tests (shared with tests/decoding): see tests/shared.py."""

from shared.decoding import lm, one_thread  # noqa: F401  (fixtures: one_thread is autouse)
