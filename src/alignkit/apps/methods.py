"""The methods tables (``alignkit methods`` and the README), generated from every registry: recipes, preference
losses, online methods, RL advantage estimators and reward sources (the spec grammar's kinds)."""

from __future__ import annotations

from pathlib import Path

from alignkit.losses import LOSSES
from alignkit.recipes import RECIPES
from alignkit.recipes.common.online_methods import ONLINE_METHODS
from alignkit.report.tables import markdown_table
from alignkit.rewards.spec import reward_kinds
from alignkit.rl.advantages import advantage_rows
from alignkit.utils.io import write_text


def recipes_table() -> str:
    rows = [{"recipe": r.name, "trains": r.summary, "distributed": ", ".join(r.distributed)}
            for r in RECIPES.values()]
    return markdown_table(rows, ["recipe", "trains", "distributed"], markdown=True)


def losses_table() -> str:
    rows = [{"name": s.name, "data": s.data_kind, "reduction": s.reduction,
             "reference": "yes" if s.needs_reference else "no",
             "defaults": ", ".join(f"{k}={v}" for k, v in s.defaults.items()), "paper": s.paper,
             "loss": s.summary}
            for s in sorted(LOSSES.values(), key=lambda s: s.name)]
    return markdown_table(rows, ["name", "data", "reduction", "reference", "defaults", "loss", "paper"], markdown=True)


def online_table() -> str:
    rows = [{"name": m.name, "samples": f"{m.sampler} (K={m.num_samples})", "labels": m.labels,
             "update": m.loss or m.objective, "reference": "moves each round" if m.reference_update else "fixed",
             "method": m.formula, "paper": m.paper}
            for m in sorted(ONLINE_METHODS.values(), key=lambda m: m.name)]
    return markdown_table(rows, ["name", "samples", "labels", "update", "reference", "method", "paper"], markdown=True)


def advantages_table() -> str:
    rows = [{"name": r["name"], "params (rl.advantage_params)": r["params"], "advantage": r["summary"],
             "paper": r["paper"]} for r in advantage_rows()]
    return markdown_table(rows, ["name", "params (rl.advantage_params)", "advantage", "paper"], markdown=True)


def reward_sources_table() -> str:
    rows = [{"kind": r["name"], "spec": r["usage"], "example": r["example"], "compares pairs": r["compares"],
             "reward": r["summary"], "paper": r["paper"]} for r in reward_kinds()]
    return markdown_table(rows, ["kind", "spec", "example", "compares pairs", "reward", "paper"], markdown=True)


def methods_table() -> str:
    """The recipes, offline losses (``recipe: preference``, ``loss: NAME``), online methods (``recipe: online``,
    ``online.method: NAME``), the advantage estimators of ``recipe: rl``, then the reward sources."""
    return (f"**Recipes** (`recipe: NAME`)\n\n{recipes_table()}\n\n"
            f"**Preference losses** (`recipe: preference`, `loss: NAME`)\n\n{losses_table()}\n\n"
            f"**Online methods** (`recipe: online`, `online.method: NAME`; labels from `online.reward`)\n\n"
            f"{online_table()}\n\n"
            f"**Policy-gradient RL** (`recipe: rl`, `rl.advantage: NAME`: PPO = gae with a value head; clipped "
            f"ratios, KL in the reward or the loss; `rl.combine` maxmin / reward-robust; `rl.reference_soup` "
            f"SALSA)\n\n{advantages_table()}\n\n"
            f"**Reward sources** (`online.reward`, `online.gold`, `alignkit eval --judge`: one spec grammar, "
            f"weighted mappings {{spec: weight}} mix them)\n\n{reward_sources_table()}")


START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def update_readme(path: str) -> bool:
    """Rewrite the methods table between the README's markers; True when it changed."""
    text = Path(path).read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{methods_table()}\n{END}{tail}"
    if new != text:
        write_text(path, new)
    return new != text
