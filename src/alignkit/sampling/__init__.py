"""Sampling responses from policies."""
