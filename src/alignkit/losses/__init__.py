"""Preference losses. Importing this package registers every loss family."""

from alignkit.losses import dpo  # noqa: F401  (registers)
from alignkit.losses.registry import LOSSES, LossOutput, LossSpec, PairInputs, get_loss, register_loss

__all__ = ["LOSSES", "LossOutput", "LossSpec", "PairInputs", "get_loss", "register_loss"]
