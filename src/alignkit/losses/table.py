"""The methods table (``alignkit methods`` and the README), generated from the loss registry."""

from __future__ import annotations

from alignkit.losses import LOSSES
from alignkit.report.tables import markdown_table


def methods_table() -> str:
    rows = [{"name": s.name, "data": s.data_kind, "reduction": s.reduction,
             "reference": "yes" if s.needs_reference else "no",
             "defaults": ", ".join(f"{k}={v}" for k, v in s.defaults.items()), "paper": s.paper,
             "loss": s.summary}
            for s in sorted(LOSSES.values(), key=lambda s: s.name)]
    return markdown_table(rows, ["name", "data", "reduction", "reference", "defaults", "loss", "paper"])
