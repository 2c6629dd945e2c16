"""The methods tables (``alignkit methods`` and the README), generated from every registry: recipes, preference
losses, online methods, RL advantage estimators and reward sources (the spec grammar's kinds). The README gets
markdown tables (:func:`methods_table`); a terminal gets short wrapped blocks, filterable (:func:`methods_text`)."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignkit.losses import LOSSES
from alignkit.recipes import RECIPES
from alignkit.recipes.common.online_methods import ONLINE_METHODS
from alignkit.report.tables import markdown_table
from alignkit.rewards.spec import reward_kinds
from alignkit.rl.advantages import advantage_rows
from alignkit.utils.io import write_text


@dataclass(frozen=True)
class Family:
    """One registry's table: its rows (dicts), their columns in table order, the column naming an entry, the one
    holding its formula or summary and the one citing its paper ("": none). The README's markdown table and the
    terminal blocks of ``alignkit methods`` are both made from these rows, so they cannot disagree."""

    rows: Callable[[], list[dict[str, str]]]
    columns: list[str]
    name: str
    text: str
    paper: str = "paper"

    def table(self) -> str:
        return markdown_table(self.rows(), self.columns, markdown=True)


def _recipe_rows() -> list[dict[str, str]]:
    return [{"recipe": r.name, "trains": r.summary, "distributed": ", ".join(r.distributed)}
            for r in RECIPES.values()]


def _loss_rows() -> list[dict[str, str]]:
    return [{"name": s.name, "data": s.data_kind, "reduction": s.reduction,
             "reference": "yes" if s.needs_reference else "no",
             "defaults": ", ".join(f"{k}={v}" for k, v in s.defaults.items()), "paper": s.paper,
             "loss": s.summary}
            for s in sorted(LOSSES.values(), key=lambda s: s.name)]


def _online_rows() -> list[dict[str, str]]:
    return [{"name": m.name, "samples": f"{m.sampler} (K={m.num_samples})", "labels": m.labels,
             "update": m.loss or m.objective, "reference": "moves each round" if m.reference_update else "fixed",
             "method": m.formula, "paper": m.paper}
            for m in sorted(ONLINE_METHODS.values(), key=lambda m: m.name)]


def _advantage_rows() -> list[dict[str, str]]:
    return [{"name": r["name"], "params (rl.advantage_params)": r["params"], "advantage": r["summary"],
             "paper": r["paper"]} for r in advantage_rows()]


def _reward_source_rows() -> list[dict[str, str]]:
    return [{"kind": r["name"], "spec": r["usage"], "example": r["example"], "compares pairs": r["compares"],
             "reward": r["summary"], "paper": r["paper"]} for r in reward_kinds()]


FAMILIES = {
    "recipes": Family(_recipe_rows, ["recipe", "trains", "distributed"], "recipe", "trains", paper=""),
    "losses": Family(_loss_rows, ["name", "data", "reduction", "reference", "defaults", "loss", "paper"], "name",
                     "loss"),
    "online": Family(_online_rows, ["name", "samples", "labels", "update", "reference", "method", "paper"], "name",
                     "method"),
    "advantages": Family(_advantage_rows, ["name", "params (rl.advantage_params)", "advantage", "paper"], "name",
                         "advantage"),
    "rewards": Family(_reward_source_rows, ["kind", "spec", "example", "compares pairs", "reward", "paper"], "kind",
                      "reward"),
}


def methods_text(query: str = "", family: str | None = None, width: int | None = None) -> str:
    """The registries for a terminal: one short block per entry (its name and family, its settings on one line,
    its formula or summary wrapped to ``width`` (default: the terminal's), its paper), only the entries whose name
    contains ``query`` (any case) in ``family`` (None: all). ValueError when nothing matches."""
    width = width or min(max(shutil.get_terminal_size().columns, 60), 120)
    blocks = []
    for family_name, table in FAMILIES.items():
        if family is not None and family_name != family:
            continue
        for row in table.rows():
            if query.lower() not in row[table.name].lower():
                continue
            what = "; ".join(f"{column}: {row[column]}" for column in table.columns
                             if column not in (table.name, table.text, table.paper) and row[column])
            lines = textwrap.wrap(f"{row[table.name]}  [{family_name}]  {what}", width, subsequent_indent="    ")
            lines += textwrap.wrap(row[table.text].replace("`", ""), width, initial_indent="    ",
                                   subsequent_indent="    ")
            if table.paper and row[table.paper]:
                lines += textwrap.wrap(f"paper: {row[table.paper]}", width, initial_indent="    ",
                                       subsequent_indent="      ")
            blocks.append("\n".join(lines))
    if not blocks:
        where = f" among the {family}" if family else ""
        raise ValueError(f"no method name contains '{query}'{where} (families: {', '.join(FAMILIES)}; "
                         f"`alignkit methods` lists all)")
    return "\n\n".join(blocks)


def methods_table() -> str:
    """The recipes, offline losses (``recipe: preference``, ``loss: NAME``), online methods (``recipe: online``,
    ``online.method: NAME``), the advantage estimators of ``recipe: rl``, then the reward sources."""
    return (f"**Recipes** (`recipe: NAME`)\n\n{FAMILIES['recipes'].table()}\n\n"
            f"**Preference losses** (`recipe: preference`, `loss: NAME`)\n\n{FAMILIES['losses'].table()}\n\n"
            f"**Online methods** (`recipe: online`, `online.method: NAME`; labels from `online.reward`)\n\n"
            f"{FAMILIES['online'].table()}\n\n"
            f"**Policy-gradient RL** (`recipe: rl`, `rl.advantage: NAME`: PPO = gae with a value head; clipped "
            f"ratios, KL in the reward or the loss; `rl.combine` maxmin / reward-robust; `rl.reference_soup` "
            f"SALSA)\n\n{FAMILIES['advantages'].table()}\n\n"
            f"**Reward sources** (`online.reward`, `online.gold`, `alignkit eval --judge`: one spec grammar, "
            f"weighted mappings {{spec: weight}} mix them)\n\n{FAMILIES['rewards'].table()}")


START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def update_readme(path: str) -> bool:
    """Rewrite the methods table between the README's markers; True when it changed."""
    text = Path(path).read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path}: no {START} ... {END} markers around a methods table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{methods_table()}\n{END}{tail}"
    if new != text:
        write_text(path, new)
    return new != text
