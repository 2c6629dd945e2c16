"""Preference losses. Importing this package registers every loss family (one module per family)."""

from alignkit.losses import (  # noqa: F401  (each import registers a family)
    dpo,
    listwise,
    multi_objective,
    negatives,
    online,
    reference_free,
    token_level,
    unpaired,
    variants,
)
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
