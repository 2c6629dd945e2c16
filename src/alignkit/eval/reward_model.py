"""``alignkit eval rm``: benchmark a reward model (or an ensemble) on preference pairs.

Input: RewardBench-style files (``prompt, chosen, rejected, subset``), alignkit / TRL preference files (pairs;
rankings are scored best vs worst), through :func:`alignkit.data.formats.load_records` (``subset`` and other
extra keys land in ``metadata``). Text rows become a user turn and an assistant reply when the reward model's
tokenizer has a chat template (the rule of ``alignkit eval`` and ``generate``,
:func:`alignkit.sampling.base.chat_prompt`; ``--no-chat`` keeps them text).

Sequences are cut to the lengths the reward model was trained with (``max_length`` / ``max_prompt_length``, saved
in its ``config.json`` under ``alignkit_lengths`` by the reward recipe; ``--max-length`` / ``--max-prompt-length``
override them; a model without them gets its position limit and half of it). Every pair is tokenized once (its
prompt once for both responses), and the sequences are scored in batches of similar length.

Output (``--out DIR``): ``rm_eval.json``, ``rm_eval.md`` and ``reliability.png`` with
- accuracy (the chosen response gets the higher reward; ties count half) with a Wilson interval, overall, by
  subset and by annotator group;
- calibration of ``P(chosen > rejected) = sigmoid(r_c - r_r)``: ECE and a reliability diagram
  (:mod:`alignkit.stats.calibration`);
- for ensembles, the mean member std (uncertainty) on correct and on wrong pairs;
- ``--gold sandbox``: agreement with the sandbox's gold reward (share of pairs, gold ties excluded, where the
  model orders the two responses as gold does — the annotator group's gold weights when the record's group is a
  sandbox group) and the Pearson correlation of rewards with gold.

Annotator-aware models score each record with the heads of its group (``--group-by``), when the model has it.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.formats import load_records
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import tokenize_records
from alignkit.rewards.base import plain_text
from alignkit.stats.intervals import pairwise_outcomes, win_rate
from alignkit.report.tables import markdown_table
from alignkit.stats.calibration import Reliability, reliability
from alignkit.rewards.model import LENGTHS_KEY, head_layout, head_rewards
from alignkit.sampling.base import as_response, chat_prompt
from alignkit.utils.io import atomic_file, write_json, write_text


# ------------------------------------------------------------------------------------------------ data


def load_pairs(path: str, split: str = "train", tokenizer: PreTrainedTokenizerBase | None = None,
               chat: bool = True) -> list[PreferenceRecord]:
    """Records with a chosen and a rejected response (the ranking's first and last); errors name file:line. Text
    rows are asked as chat (:func:`~alignkit.sampling.base.chat_prompt`) when ``tokenizer`` has a chat template
    and ``chat`` is on."""
    records, _ = load_records(path, split=split, drop_identical=False)
    out = []
    for record in records:
        if len(record.ranking or []) < 2:
            raise DataError(f"reward-model evaluation needs chosen and rejected responses; this record is of kind "
                            f"'{record.kind}'", source=record.source, field="chosen")
        prompt = chat_prompt(tokenizer, record.prompt, chat) if tokenizer is not None else record.prompt
        responses = [as_response(prompt, r) if isinstance(r, str) else r for r in (record.chosen, record.rejected)]
        out.append(PreferenceRecord(prompt=prompt, responses=responses, ranking=[0, 1], annotator=record.annotator,
                                    metadata=record.metadata, source=record.source))
    return out


# ------------------------------------------------------------------------------------------------ scoring
def training_lengths(model: PreTrainedModel, max_length: int | None = None,
                     max_prompt_length: int | None = None) -> dict[str, Any]:
    """The lengths to score at and where they come from: the given ones, else the ones the reward recipe saved
    with the model (``config.json``, :data:`LENGTHS_KEY`), else the model's position limit and half of it."""
    saved = getattr(model.config, LENGTHS_KEY, None) or {}
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    lengths = {"max_length": max_length or saved.get("max_length") or limit,
               "max_prompt_length": max_prompt_length or saved.get("max_prompt_length")}
    lengths["max_prompt_length"] = lengths["max_prompt_length"] or lengths["max_length"] // 2
    given = max_length is not None or max_prompt_length is not None
    lengths["source"] = "options" if given else "saved with the model" if saved else "model position limit"
    if lengths["max_prompt_length"] >= lengths["max_length"]:
        raise DataError(f"max_prompt_length={lengths['max_prompt_length']} must be below "
                        f"max_length={lengths['max_length']} ({lengths['source']})")
    return lengths


@torch.no_grad()
def pair_members(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                 records: Sequence[PreferenceRecord], groups: Sequence[str | None], batch_size: int = 32,
                 lengths: dict[str, Any] | None = None,
                 report: DataReport | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ensemble member's reward of the chosen and of the rejected responses: two ``[P, M]`` tensors. A model
    with annotator groups uses the record's group's heads when it has that group, else the mean over groups.

    The pairs are tokenized once, as in training (:func:`alignkit.data.tokenize.tokenize_records` at ``lengths``,
    truncations counted in ``report``; a pair whose responses become identical is kept and counted), and the
    ``2P`` sequences are scored sorted by length, right-padded as in training, ``batch_size`` at a time."""
    lengths = lengths or training_lengths(models[0])
    report = report if report is not None else DataReport()
    items = tokenize_records(tokenizer, records, max_length=lengths["max_length"],
                             max_prompt_length=lengths["max_prompt_length"], overlength="truncate", report=report,
                             drop_identical=False)
    sequences = [item.sequence(k)[0] for k in (0, 1) for item in items]   # chosen of every pair, then rejected
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    columns = []
    for model in models:
        was_training, device, layout = model.training, next(model.parameters()).device, head_layout(model)
        model.eval()
        heads = torch.empty(len(sequences), layout.num_groups, layout.ensemble)
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(sequences[i]) for i in rows], batch_first=True,
                                                  padding_value=tokenizer.pad_token_id)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(sequences[i]), dtype=torch.long) for i in rows],
                                                   batch_first=True)
            heads[rows] = head_rewards(model, _Inputs(ids.to(device), mask.to(device))).cpu()
        model.train(was_training)
        pick = torch.tensor([layout.groups.index(g) if g in layout.groups else -1 for g in list(groups) * 2])
        chosen = heads[torch.arange(len(pick)), pick.clamp(min=0)]
        columns.append(torch.where((pick >= 0)[:, None], chosen, heads.mean(1)))
    members = torch.cat(columns, dim=-1)
    return members[: len(records)], members[len(records):]


class _Inputs:
    """The two fields of a :class:`~alignkit.data.collate.Batch` that :func:`head_rewards` reads."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.input_ids, self.attention_mask = input_ids, attention_mask


def accuracy_summary(margins: np.ndarray) -> dict[str, Any]:
    rate = win_rate(pairwise_outcomes(margins, np.zeros_like(margins)))
    return {"n": rate.n, "accuracy": rate.rate, "ci_low": rate.low, "ci_high": rate.high}


def gold_agreement(records: Sequence[PreferenceRecord], groups: Sequence[str | None], chosen: np.ndarray,
                   rejected: np.ndarray) -> dict[str, Any]:
    """Agreement of the model's ordering with the sandbox gold reward (gold ties excluded)."""
    from alignkit.sandbox import world

    def gold(record: PreferenceRecord, k: int, group: str | None) -> float:
        return world.gold_reward(plain_text(record.prompt), plain_text(record.responses[k]),
                                 group if group in world.GROUP_WEIGHTS else None)

    g_c = np.array([gold(r, 0, g) for r, g in zip(records, groups)])
    g_r = np.array([gold(r, 1, g) for r, g in zip(records, groups)])
    decided = g_c != g_r
    agree = (np.sign(chosen - rejected) == np.sign(g_c - g_r))[decided]
    rewards, golds = np.concatenate([chosen, rejected]), np.concatenate([g_c, g_r])
    pearson = float(np.corrcoef(rewards, golds)[0, 1]) if rewards.std() > 0 and golds.std() > 0 else float("nan")
    return {"n_decided": int(decided.sum()), "agreement": float(agree.mean()) if agree.size else float("nan"),
            "label_agrees_with_gold": float((g_c > g_r)[decided].mean()) if decided.any() else float("nan"),
            "pearson": pearson}


def by_key(keys: Sequence[str | None], margins: np.ndarray) -> dict[str, dict[str, Any]]:
    out = {}
    for key in sorted({k for k in keys if k is not None}):
        mask = np.array([k == key for k in keys])
        out[key] = accuracy_summary(margins[mask])
    return out


def evaluate_reward_model(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                          records: Sequence[PreferenceRecord], *, batch_size: int = 32, subset_key: str = "subset",
                          group_by: str | None = None, gold: str | None = None, bins: int = 10,
                          lengths: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy (overall, by subset, by group), calibration, ensemble uncertainty and gold agreement, at
    ``lengths`` (default: :func:`training_lengths` of the first model); truncations are counted in the result."""
    if not records:
        raise DataError("no pairs to evaluate")
    if group_by is None and any(r.annotator is not None for r in records):
        group_by = "annotator"
    groups = [r.group_value(group_by) if group_by else None for r in records]
    lengths = lengths or training_lengths(models[0])
    report = DataReport()
    chosen_m, rejected_m = pair_members(models, tokenizer, records, groups, batch_size, lengths, report)
    chosen, rejected = chosen_m.mean(-1).numpy(), rejected_m.mean(-1).numpy()
    margins = chosen - rejected
    table = reliability(margins, bins)
    result: dict[str, Any] = {
        "pairs": len(records), "members": int(chosen_m.shape[-1]), **accuracy_summary(margins),
        "by_subset": by_key([r.group_value(subset_key) if subset_key else None for r in records], margins),
        "group_by": group_by, "by_group": by_key(groups, margins), "calibration": table.as_dict(),
        "lengths": lengths, "truncated_pairs": report.truncated,
        "identical_after_truncation": sum(report.anomalies.values()),
    }
    if chosen_m.shape[-1] > 1:
        std = (chosen_m.std(-1, correction=0) + rejected_m.std(-1, correction=0)).numpy() / 2
        right = margins > 0
        result["uncertainty"] = {"mean_std": float(std.mean()),
                                 "mean_std_correct": float(std[right].mean()) if right.any() else None,
                                 "mean_std_wrong": float(std[~right].mean()) if (~right).any() else None}
    if gold == "sandbox":
        result["gold"] = gold_agreement(records, groups, chosen, rejected)
    elif gold is not None:
        raise ValueError(f"unknown gold reward {gold!r}; only 'sandbox' is available")
    return result


# ------------------------------------------------------------------------------------------------ report
def plot_reliability(table: Reliability, out_png: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    try:
        centres = (table.edges[:-1] + table.edges[1:]) / 2
        width = table.edges[1] - table.edges[0]
        filled = table.counts > 0
        ax.bar(centres[filled], table.accuracy[filled], width=width * 0.9, color="tab:blue", alpha=0.8,
               label="accuracy")
        ax.plot([0.5, 1], [0.5, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(centres[filled], table.confidence[filled], "_", color="tab:red", ms=14, mew=2,
                label="mean confidence (gap = miscalibration)")
        for x, n in zip(centres[filled], table.counts[filled]):   # pairs per bin, at the foot of its bar
            ax.annotate(f"{int(n)}", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.set(xlim=(0.5, 1), ylim=(0, 1.08), xlabel="confidence  max(p, 1-p)", ylabel="accuracy",
               title=title or f"reliability (ECE {table.ece:.3f}; pairs per bin at the foot)")
        ax.legend(loc="upper left", fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    with atomic_file(out_png, "wb") as fh:
        fh.write(buf.getvalue())
    return out_png


def markdown_report(result: dict[str, Any], title: str) -> str:
    overall = {k: result[k] for k in ("n", "accuracy", "ci_low", "ci_high")}
    lines = [f"# Reward-model evaluation: {title}", "",
             markdown_table([{"slice": "all", **overall, "ece": result["calibration"]["ece"]}]), ""]
    for name, key in (("subset", "by_subset"), (f"group ({result['group_by']})", "by_group")):
        if result[key]:
            lines += [f"## By {name}", "", markdown_table([{name: k, **v} for k, v in result[key].items()]), ""]
    if "uncertainty" in result:
        lines += [f"## Ensemble ({result['members']} members)", "", markdown_table([result["uncertainty"]]), ""]
    if "gold" in result:
        lines += ["## Agreement with the sandbox gold reward", "", markdown_table([result["gold"]]), ""]
    lines += ["![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def write_rm_report(result: dict[str, Any], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal = result["calibration"]
    table = Reliability(np.array(cal["edges"]), np.array(cal["counts"], dtype=float),
                        np.array([np.nan if v is None else v for v in cal["confidence"]]),
                        np.array([np.nan if v is None else v for v in cal["accuracy"]]), cal["ece"])
    paths = {"json": out / "rm_eval.json", "markdown": out / "rm_eval.md", "png": out / "reliability.png"}
    write_json(paths["json"], result)
    write_text(paths["markdown"], markdown_report(result, title))
    plot_reliability(table, paths["png"])
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def build_rm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit eval rm",
                                     description="Benchmark a reward model (or an ensemble) on preference pairs.")
    parser.add_argument("--model", action="append", required=True, metavar="PATH",
                        help="reward model directory; repeat for an ensemble of independently trained models")
    parser.add_argument("--data", required=True, help="pairs: RewardBench (prompt, chosen, rejected, subset) or "
                                                      "alignkit / TRL preference files")
    parser.add_argument("--out", default="rm-eval", help="report directory")
    parser.add_argument("--split", default="train", help="split of a saved DatasetDict")
    parser.add_argument("--subset-key", default="subset", help="field that names a row's subset")
    parser.add_argument("--group-by", default=None,
                        help="annotator or a metadata field for per-group accuracy (default: annotator if present)")
    parser.add_argument("--gold", choices=["sandbox"], default=None, help="also measure agreement with this gold")
    parser.add_argument("--no-chat", action="store_true",
                        help="keep text rows text (default: a user turn and an assistant reply through the "
                             "tokenizer's chat template, when it has one, as in training)")
    parser.add_argument("--chat", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per prompt + response (default: the length the reward model was trained "
                             "with, saved in its config.json; else its position limit)")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="prompt tokens kept, from the right (default: the trained one; else max-length / 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bins", type=int, default=10, help="confidence bins for ECE")
    parser.set_defaults(command="eval-rm", fn=cmd_eval_rm)
    return parser


def cmd_eval_rm(args: argparse.Namespace) -> int:
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards.model import load_reward_model

    tokenizer = load_tokenizer(args.model[0])
    models = [load_reward_model(path, tokenizer) for path in args.model]
    records = load_pairs(args.data, args.split, tokenizer, chat=not args.no_chat)
    try:
        lengths = training_lengths(models[0], args.max_length, args.max_prompt_length)
    except DataError as exc:
        print(f"alignkit: error: {exc}", file=sys.stderr)
        return 2
    result = evaluate_reward_model(models, tokenizer, records, batch_size=args.batch_size,
                                   subset_key=args.subset_key, group_by=args.group_by, gold=args.gold,
                                   bins=args.bins, lengths=lengths)
    result.update(models=list(args.model), data=args.data)
    paths = write_rm_report(result, args.out, title=", ".join(Path(m).name for m in args.model))
    print(f"[alignkit] reward model: accuracy {result['accuracy']:.3f} on {result['pairs']} pairs, ECE "
          f"{result['calibration']['ece']:.3f}; lengths {lengths['max_length']}/{lengths['max_prompt_length']} "
          f"({lengths['source']}), {result['truncated_pairs']} pairs truncated; report: {paths['markdown']}")
    return 0
