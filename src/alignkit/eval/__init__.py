"""Evaluation statistics: win rates, confidence intervals."""
