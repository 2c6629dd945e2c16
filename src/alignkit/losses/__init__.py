"""Preference losses. Importing this package registers every loss family (one module per family)."""

from alignkit.losses import dpo, listwise, multi_objective, reference_free, unpaired, variants  # noqa: F401
from alignkit.losses.registry import (
    LOSSES,
    LossOutput,
    LossSpec,
    NegativesInputs,
    PairInputs,
    RankedInputs,
    TokenLogps,
    UnpairedInputs,
    get_loss,
    register_loss,
)

__all__ = ["LOSSES", "LossOutput", "LossSpec", "NegativesInputs", "PairInputs", "RankedInputs", "TokenLogps",
           "UnpairedInputs", "get_loss", "register_loss"]
