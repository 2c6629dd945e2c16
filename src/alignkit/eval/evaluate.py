"""``alignkit eval``: sample from models on held-out prompts, judge them, compare them, report.

For every model against the baseline, on the same prompts:

* win rate (ties count half) with a 95% tie-aware Wilson interval (:func:`alignkit.stats.intervals.win_rate`), from a
  pointwise judge's totals or from a pairwise judge run in both presentation orders
  (:mod:`alignkit.rewards.pairwise`: position consistency and bias are reported, inconsistent pairs are ties);
  comparisons the judge could not decide are counted as ``invalid`` and left out of the rate;
* the length-controlled win rate of AlpacaEval 2.0 (:mod:`alignkit.stats.length_control`);
* Bradley-Terry ratings of all models with bootstrap intervals (:mod:`alignkit.stats.ratings`), from the
  comparisons with the baseline and, for pointwise judges (free) or when asked, between every two models;
* mean judge score in total and per objective, for the judge and any extra pointwise ``reward_judges``;
* KL(policy || reference): the Monte-Carlo mean of log pi(y|x) - log pi_ref(y|x) over the policy's own samples
  (sequence level, nats; unbiased, with its interval); response length and the share that ended with EOS.

The report is a dict, and in ``out_dir``: ``eval.json``, ``eval.md``, PNG plots, ``samples.jsonl`` (every sample of
every model with its scores and its verdict against the baseline, :func:`sample_rows`) and ``eval.html`` (which
browses the samples).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alignkit.data.records import DataError, Text
from alignkit.rewards.base import Judge, PairwiseJudge, is_pairwise
from alignkit.stats.length_control import length_controlled_win_rates
from alignkit.rewards.pairwise import judge_both_orders, score_outcomes
from alignkit.stats.ratings import Battles, bradley_terry_ratings
from alignkit.stats.intervals import mean_ci, win_rate
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.report.html import (embed_png, examples_html, filter_table, heading, html_table, paragraph, render_page,
                                  write_page)
from alignkit.report.plots import plot_bars, plot_intervals, plot_reward_vs_kl, plot_training_curves
from alignkit.report.tables import format_ci, markdown_escape, markdown_table
from alignkit.sampling.base import chat_prompt, uses_chat
from alignkit.sampling.generate import Sample, SamplingConfig, generate, score_samples
from alignkit.utils.io import write_json, write_jsonl, write_text


@dataclass
class ModelResult:
    """One model's samples, their KL to the reference and the pointwise judges' scores of them."""

    name: str
    path: str
    scores: dict[str, np.ndarray]           # the main judge's, when it is pointwise ({} for pairwise judges)
    samples: list[Sample]
    kl: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)   # "rewards": {judge name: scores} of extra judges

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.response_ids) for s in self.samples], dtype=float)

    def summary(self, baseline: "ModelResult | None") -> dict[str, Any]:
        """The report row; win rate against ``baseline`` from the pointwise scores' totals."""
        outcomes = score_outcomes(self.scores["total"], baseline.scores["total"]) \
            if baseline is not None and baseline is not self and "total" in self.scores else None
        return summary_row(self, outcomes)


def _interval(values: np.ndarray) -> dict[str, Any]:
    """Mean with a Student-t interval over the finite values; NaN (invalid) values are counted, not averaged."""
    finite = values[np.isfinite(values)]
    row: dict[str, Any] = {"mean": math.nan, "low": math.nan, "high": math.nan}
    if finite.size:
        row["mean"], row["low"], row["high"] = mean_ci(finite)
    if finite.size < values.size:
        row["invalid"] = int(values.size - finite.size)
    return row


def summary_row(result: ModelResult, outcomes: np.ndarray | None) -> dict[str, Any]:
    """Report row of one model: win rate from ``outcomes`` against the baseline (NaN: invalid comparisons),
    mean scores per judge and objective, KL, length, finished share."""
    row: dict[str, Any] = {"model": result.name, "path": result.path, "n": len(result.samples)}
    if outcomes is not None:
        valid = outcomes[~np.isnan(outcomes)]
        row["win_rate"] = win_rate(valid).as_dict() if valid.size else None
        row["invalid"] = int(outcomes.size - valid.size)
    for key, values in result.scores.items():
        row[f"reward/{key}"] = _interval(values)
    for judge_name, scores in result.extra.get("rewards", {}).items():
        for key, values in scores.items():
            row[f"reward/{judge_name}/{key}"] = _interval(values)
    row["kl"] = _interval(result.kl)
    row["length"] = {"mean": float(result.lengths.mean()), "median": float(np.median(result.lengths))}
    row["finished"] = float(np.mean([s.finished for s in result.samples]))
    return row


def parse_model_arg(item: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); ``PATH`` -> (None, PATH). The text before the first ``=`` is a name only
    when it is not empty, holds no ``/`` and the whole argument is not an existing path (``runs/lr=1e-5/model``
    and a folder ``lr=1e-5`` are paths)."""
    name, sep, path = item.partition("=")
    if not sep or not name or "/" in name or os.sep in name or Path(item).exists():
        return None, item
    return name, path


def _folders(path: str) -> list[str]:
    """The folder names of ``path`` made absolute, root first (``run1/model`` -> [..., "run1", "model"])."""
    return [part for part in Path(os.path.abspath(path)).parts if part != os.sep]


def _derived_names(paths: Sequence[str]) -> list[str]:
    """A name per path: its last folder; paths whose last folders are the same are named by the fewest parent
    folders that tell them apart (``run1/model``, ``run2/model`` -> ``run1``, ``run2``; ``a/x/model``,
    ``b/x/model`` -> ``a/x``, ``b/x``). Paths that no parent tells apart keep the last folder (a duplicate)."""
    folders = [_folders(p) or [p] for p in paths]
    names = [f[-1] for f in folders]
    for last in {n for n in names if names.count(n) > 1}:
        group = [i for i, n in enumerate(names) if n == last]
        for depth in range(1, max(len(folders[i]) for i in group)):
            parents = ["/".join(folders[i][-1 - depth:-1]) for i in group]
            if len(set(parents)) == len(parents):
                for i, parent in zip(group, parents):
                    names[i] = parent
                break
    return names


def duplicate_name_error(name: str, first: str, second: str) -> ValueError:
    """The one-line error for two models under one name."""
    return ValueError(f"two models are named '{name}' ({first} and {second}); give each model its own name with "
                      "--model NAME=PATH")


def model_names(items: Sequence[str], baseline: str = "", baseline_name: str = "baseline") -> dict[str, str]:
    """Name -> path for ``alignkit eval --model [NAME=]PATH`` arguments: explicit names as given, the others
    derived from their folders (:func:`_derived_names`). A name given twice, or equal to the baseline's, is a
    ValueError naming it and both paths (models are never silently dropped or replaced)."""
    parsed = [parse_model_arg(item) for item in items]
    unnamed = [path for name, path in parsed if name is None]
    derived = iter(_derived_names(unnamed))
    models: dict[str, str] = {}
    for name, path in parsed:
        name = next(derived) if name is None else name
        if name == baseline_name:
            raise duplicate_name_error(name, path, f"the baseline {baseline}".rstrip())
        if name in models:
            raise duplicate_name_error(name, models[name], path)
        models[name] = path
    return models


def sample_and_judge(name: str, path: str, prompts: Sequence[Text], judge: Judge | None, sampling: SamplingConfig,
                     reference: Any, tokenizer: Any, progress: bool,
                     reward_judges: Sequence[Judge] = ()) -> ModelResult:
    """Sample ``path`` on ``prompts``, score KL to ``reference`` and the pointwise ``judge`` (None: a pairwise
    judge compares later) and ``reward_judges``."""
    model = load_causal_lm(path)
    samples = generate(model, tokenizer, prompts, sampling, progress=progress, desc=f"eval {name}")
    policy_logps = score_samples(model, samples, tokenizer.pad_token_id)
    ref_logps = score_samples(reference, samples, tokenizer.pad_token_id)
    asked, texts = [prompts[s.prompt_index] for s in samples], [s.text for s in samples]
    try:
        scores = judge.score(asked, texts) if judge is not None else {}
        rewards = {j.name: j.score(asked, texts) for j in reward_judges}
    except DataError as exc:  # a judge refused these responses (e.g. sandbox-gold on a foreign model): say whose
        exc.args = (f"{exc.args[0]} [responses of model '{name}': {path}]",)
        raise
    return ModelResult(name, path, scores, samples, (policy_logps - ref_logps).numpy(), {"rewards": rewards})


def compare(judge: Judge | PairwiseJudge, prompts: Sequence[Text], a: ModelResult,
            b: ModelResult) -> tuple[np.ndarray, dict[str, Any]]:
    """Outcomes of ``a`` against ``b`` per sample (1 / 0.5 / 0, NaN invalid) and the protocol statistics:
    score differences for a pointwise judge, both presentation orders for a pairwise one."""
    if not is_pairwise(judge):
        outcomes = score_outcomes(a.scores["total"], b.scores["total"])
        return outcomes, {"comparisons": len(outcomes), "invalid": int(np.isnan(outcomes).sum())}
    asked = [prompts[s.prompt_index] for s in a.samples]
    result = judge_both_orders(judge, asked, [s.text for s in a.samples], [s.text for s in b.samples])
    return result.outcomes, result.stats()


def evaluate(models: dict[str, str], baseline: str, prompts: Sequence[Text], judge: Judge | PairwiseJudge, *,
             reference: str | None = None, sampling: SamplingConfig | None = None, out_dir: str | Path | None = None,
             progress: bool = True, baseline_name: str = "baseline", reward_judges: Sequence[Judge] = (),
             length_control: bool = True, ratings: bool = True, all_pairs: bool | None = None,
             n_bootstrap: int = 1000, seed: int = 0, html: bool | str | Path = True,
             chat: bool = True) -> dict[str, Any]:
    """Compare each of ``models`` (name -> directory) with ``baseline`` on ``prompts`` using ``judge``.

    ``judge`` is pointwise (:class:`~alignkit.rewards.base.Judge`) or pairwise
    (:class:`~alignkit.rewards.base.PairwiseJudge`); ``reward_judges`` add mean scores of more pointwise
    judges. The reference for KL defaults to the baseline. ``all_pairs`` (default: only for pointwise judges,
    where it is free) also compares every two models for the ratings. ``n_bootstrap`` resamples the ratings
    (and a fifth as many the LC win rates) with ``seed``. Writes ``eval.json``, ``eval.md`` and plots to
    ``out_dir`` when given, and an HTML page (``html``: True for ``out_dir/eval.html``, a path, or False);
    returns the report as a dict. Text prompts are asked as a user turn through the baseline tokenizer's chat
    template when it has one (:func:`alignkit.sampling.base.chat_prompt`; ``chat=False`` gives them as plain text).
    """
    if baseline_name in models:
        raise duplicate_name_error(baseline_name, models[baseline_name], f"the baseline {baseline}")
    sampling = sampling or SamplingConfig()
    pairwise = is_pairwise(judge)
    tokenizer = load_tokenizer(baseline)
    given, prompts = list(prompts), [chat_prompt(tokenizer, p, chat) for p in prompts]
    reference_model = load_causal_lm(reference or baseline)
    pointwise_judge = None if pairwise else judge
    results = [sample_and_judge(name, path, prompts, pointwise_judge, sampling, reference_model, tokenizer, progress,
                                reward_judges) for name, path in {baseline_name: baseline, **models}.items()]
    base, others = results[0], results[1:]
    all_pairs = not pairwise if all_pairs is None else all_pairs
    pairs = list(itertools.combinations(results, 2)) if all_pairs else [(r, base) for r in others]
    compared = {(a.name, b.name): compare(judge, prompts, a, b) for a, b in pairs}
    versus_base = {r.name: compared[(r.name, base.name)] if (r.name, base.name) in compared
                   else _flip(compared[(base.name, r.name)]) for r in others}
    rows = [summary_row(base, None)] + [summary_row(r, versus_base[r.name][0]) for r in others]
    for row in rows[1:]:
        row["judge_protocol"] = versus_base[row["model"]][1]
    report: dict[str, Any] = {
        "judge": judge.name, "judge_mode": "pairwise" if pairwise else "pointwise",
        "objectives": list(getattr(pointwise_judge, "objectives", ())), "reward_judges": [j.name for j in reward_judges],
        "prompts": len(prompts), "chat_template": uses_chat(tokenizer, chat), "baseline": baseline_name, "baseline_path": baseline,
        "reference": reference or baseline, "sampling": vars(sampling), "models": rows,
        "examples": [{"prompt": _short(prompts[s.prompt_index]), baseline_name: s.text,
                      **{r.name: r.samples[i].text for r in others}} for i, s in enumerate(base.samples[:5])],
    }
    if hasattr(judge, "stats"):
        report["judge_stats"] = judge.stats()
    if length_control and others:
        lc = length_controlled_win_rates({r.name: versus_base[r.name][0] for r in others},
                                         {r.name: r.lengths for r in others}, base.lengths,
                                         n_bootstrap=max(1, n_bootstrap // 5), seed=seed)
        for row, item in zip(rows[1:], lc):
            row["lc_win_rate"] = {"rate": item.lc, "low": item.low, "high": item.high, "raw": item.raw,
                                  "length_coef": item.length_coef, "n": item.n}
    battles = Battles.from_outcomes([r.name for r in results], {k: v[0] for k, v in compared.items()})
    if ratings and len(battles):
        rated = bradley_terry_ratings(battles, anchor=base.name, n_bootstrap=n_bootstrap, seed=seed)
        report["ratings"] = [r.as_dict() for r in rated]
        by_name = {r.model: r for r in rated}
        for row in rows:
            r = by_name[row["model"]]
            row["rating"] = {"rating": r.rating, "low": r.low, "high": r.high}
    if out_dir is not None:
        write_report(report, Path(out_dir), html=html,
                     samples=sample_rows(given, results, {k: v[0] for k, v in versus_base.items()}))
    return report


def _verdict(outcome: float) -> str:
    """win / tie / loss for outcomes 1 / 0.5 / 0, ``soft`` in between, ``invalid`` for NaN."""
    if math.isnan(outcome):
        return "invalid"
    return {1.0: "win", 0.5: "tie", 0.0: "loss"}.get(outcome, "soft")


def _value(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def sample_rows(prompts: Sequence[Text], results: Sequence[ModelResult],
                outcomes: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every sample of every model, per prompt (models in report order): the prompt as given, the model, its
    response, whether it ended with EOS, its length in tokens, its KL term, the main judge's scores, every extra
    judge's scores and, for models other than the baseline, the outcome against the baseline's sample of the same
    prompt with its verdict (win / tie / loss / soft / invalid). Nothing is left out: ``samples.jsonl`` holds them."""
    rows = []
    for result in results:
        k = max(1, len(result.samples) // max(1, len({s.prompt_index for s in result.samples})))
        for j, sample in enumerate(result.samples):
            row: dict[str, Any] = {
                "prompt_index": sample.prompt_index, "sample_index": j % k, "model": result.name,
                "prompt": prompts[sample.prompt_index], "response": sample.text, "finished": sample.finished,
                "length": len(sample.response_ids), "kl": _value(result.kl[j]),
                "scores": {key: _value(values[j]) for key, values in result.scores.items()},
                "rewards": {judge: {key: _value(values[j]) for key, values in scores.items()}
                            for judge, scores in result.extra.get("rewards", {}).items()}}
            if result.name in outcomes:
                outcome = float(outcomes[result.name][j])
                row["outcome_vs_baseline"], row["verdict"] = _value(outcome), _verdict(outcome)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["prompt_index"], r["sample_index"]))   # stable: models keep their order


def _flip(comparison: tuple[np.ndarray, dict[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
    """The same comparison from the other side: outcome ``1 - o``; position bias is the judge's, unchanged."""
    outcomes, stats = comparison
    return 1.0 - outcomes, stats


def _short(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _ci_cell(item: dict[str, Any] | None, key: str = "rate", fmt: str = ".3f") -> str:
    if not item or item.get(key) is None or not np.isfinite(item[key]):
        return "—"
    return format_ci(item[key], item["low"], item["high"], fmt)


def _reward_keys(report: dict[str, Any], objectives: Sequence[str]) -> list[str]:
    """Score columns: the main judge's total and objectives, then every extra judge's."""
    present = set().union(*(m.keys() for m in report["models"]))
    keys = [k for k in ("reward/total", *(f"reward/{o}" for o in objectives)) if k in present]
    return keys + sorted(k for k in present if k.startswith("reward/") and k.count("/") >= 2)


def table_rows(report: dict[str, Any], objectives: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The main table: win rate [95% CI], LC win rate, rating, mean scores, KL, length and the share of responses
    that ended with EOS (a chat model asked without its template rarely stops) per model."""
    objectives = report.get("objectives", ()) if objectives is None else objectives
    rows = []
    for m in report["models"]:
        row: dict[str, Any] = {"model": m["model"],
                               f"win rate vs {report['baseline']} [95% CI]": _ci_cell(m.get("win_rate"))}
        if any("lc_win_rate" in x for x in report["models"]):
            row["LC win rate [95% CI]"] = _ci_cell(m.get("lc_win_rate"))
        if "ratings" in report:
            row["Elo [95% CI]"] = _ci_cell(m.get("rating"), "rating", ".0f")
        for key in _reward_keys(report, objectives):
            label = "gold total" if key == "reward/total" and report["judge"].startswith("sandbox-gold") else key[7:]
            row[label] = m[key]["mean"] if key in m else None
        row["KL to ref"], row["length"] = m["kl"]["mean"], m["length"]["mean"]
        row["finished"] = m.get("finished")
        if any(x.get("invalid") for x in report["models"]):
            row["invalid"] = m.get("invalid")
        rows.append(row)
    return rows


def protocol_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge protocol per model against the baseline: comparisons, invalid, position consistency and bias."""
    rows = []
    for m in report["models"][1:]:
        stats = m.get("judge_protocol", {})
        rows.append({"model": m["model"], **{k: stats.get(k) for k in (
            "comparisons", "invalid", "position_consistency", "position_bias", "inconsistent_as_ties")
            if k in stats}})
    return rows


def ratings_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Bradley-Terry ratings (Elo scale, baseline = 1000), best first."""
    return [{"model": r["model"], "Elo": r["rating"], "95% low": r["low"], "95% high": r["high"],
             "battles": r["battles"]} for r in report.get("ratings", [])]


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so that ``eval.json`` is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], out_dir: Path, judge: Judge | None = None,
                 html: bool | str | Path = True, samples: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """``eval.json``, ``eval.md``, the plots and ``samples.jsonl`` (``samples``: :func:`sample_rows`, when given)
    in ``out_dir``, and the HTML page (``html``: True for ``out_dir/eval.html``, a path, or False); returns the
    plots. Names and texts in ``eval.md`` are escaped
    (:func:`~alignkit.report.tables.markdown_escape`), as they are in the HTML page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objectives = report.get("objectives", ()) if judge is None else judge.objectives
    write_json(out_dir / "eval.json", _json_safe(report))
    md = [f"# Evaluation ({markdown_escape(report['judge'])}, {report['prompts']} prompts)", "",
          markdown_table(table_rows(report, objectives)), ""]
    if report["judge_mode"] == "pairwise":
        md += ["## Judge protocol (both presentation orders)", "", markdown_table(protocol_rows(report)), ""]
    if report.get("ratings"):
        md += ["## Bradley-Terry ratings", "", markdown_table(ratings_rows(report)), ""]
    write_text(out_dir / "eval.md", "\n".join(md))
    if samples:
        write_jsonl(out_dir / "samples.jsonl", samples)
    plots = _write_plots(report, out_dir, objectives)
    if html:
        write_html_report(report, out_dir / "eval.html" if html is True else Path(html), plots, samples)
    return plots


def render_html(report: dict[str, Any], images: Iterable[str | Path] = (),
                samples: Sequence[dict[str, Any]] = ()) -> str:
    """The self-contained page for an ``alignkit eval`` report: the rows of :func:`table_rows`,
    :func:`protocol_rows` and :func:`ratings_rows`, the plots, and every sample (:func:`samples_html`; without
    them, the examples), all escaped (:mod:`alignkit.report.html`)."""
    title = f"Evaluation: {report['judge']}, {report['prompts']} prompts"
    sections = [heading(title, 1),
                paragraph(f"{_baseline_text(report)}; KL reference {report['reference']}; judge mode "
                          f"{report.get('judge_mode', '')}; text prompts asked "
                          f"{'through the chat template' if report.get('chat_template') else 'as plain text'}",
                          "meta"),
                heading("Models"), html_table(table_rows(report))]
    if report.get("judge_mode") == "pairwise":
        sections += [heading("Judge protocol (both presentation orders)"),
                     paragraph("Position consistency: share of comparisons whose verdict does not flip with the "
                               "order (inconsistent ones count as ties). Position bias: (first-slot - second-slot "
                               "verdicts) / valid verdicts."), html_table(protocol_rows(report))]
    sections += [paragraph(note, "meta") for note in report.get("notes", [])]
    if report.get("judge_stats"):
        sections += [heading("Judge"), html_table([report["judge_stats"]])]
    if report.get("ratings"):
        sections += [heading("Bradley-Terry ratings"), html_table(ratings_rows(report))]
    images = list(images)
    if images:
        sections += [heading("Plots"), *(embed_png(p, Path(p).stem) for p in images)]
    if samples:
        sections += [heading(f"Samples ({len(samples)}, also in samples.jsonl)"), samples_html(samples)]
    else:
        sections += [heading("Examples"), examples_html(report.get("examples", []))]
    return render_page(title, sections)


def samples_html(samples: Sequence[dict[str, Any]]) -> str:
    """Every sample, per prompt, in one table with a filter by model: prompt, response (escaped, whitespace kept),
    finished, length, the main judge's total and the verdict against the baseline."""
    rows = [{"#": s["prompt_index"], "model": s["model"], "prompt": _short(s["prompt"]), "response": s["response"],
             "finished": "yes" if s["finished"] else "no", "length": s["length"],
             "score": s["scores"].get("total"), "vs baseline": s.get("verdict", "")} for s in samples]
    columns = ["#", "model", "prompt", "response", "finished", "length", "score", "vs baseline"]
    if all(r["score"] is None for r in rows):
        columns.remove("score")
    return filter_table(rows, columns, key="model", name="samples", pre=("prompt", "response"))


def _baseline_text(report: dict[str, Any]) -> str:
    """"baseline PATH", or "baseline NAME (PATH)" when it was given a name of its own (not "baseline baseline")."""
    name, path = report["baseline"], report["baseline_path"]
    return f"baseline {path}" if name in ("baseline", path) else f"baseline {name} ({path})"


def write_html_report(report: dict[str, Any], out_path: str | Path, images: Iterable[str | Path] = (),
                      samples: Sequence[dict[str, Any]] = ()) -> Path:
    """Write :func:`render_html` to ``out_path`` atomically; returns the path."""
    return write_page(out_path, render_html(report, images, samples))


def _write_plots(report: dict[str, Any], out_dir: Path, objectives: Sequence[str]) -> list[Path]:
    models, plots = report["models"], []
    keys = [k for k in (*objectives, "total") if f"reward/{k}" in models[0]]
    if keys:
        plots.append(plot_bars({m["model"]: {k: m[f"reward/{k}"]["mean"] for k in keys} for m in models},
                               out_dir / "objectives.png", title="Mean judge score per objective"))
    rates = {m["model"]: {name: (m[key][field], m[key]["low"], m[key]["high"])
                          for name, key, field in (("raw", "win_rate", "rate"), ("LC", "lc_win_rate", "rate"))
                          if m.get(key) and np.isfinite(m[key][field])} for m in models[1:]}
    rates = {k: v for k, v in rates.items() if v}
    if rates:
        plots.append(plot_intervals(rates, out_dir / "win_rates.png", reference=0.5, xlabel="win rate",
                                    title=f"Win rate vs {report['baseline']} (95% CI)"))
    if report.get("ratings"):
        plots.append(plot_intervals({r["model"]: {"Elo": (r["rating"], r["low"], r["high"])}
                                     for r in report["ratings"]}, out_dir / "ratings.png", reference=1000.0,
                                    xlabel="Elo (Bradley-Terry)", title="Ratings (95% bootstrap CI)"))
    points = [{"name": report["judge"], "kl": max(0.0, m["kl"]["mean"]), "reward": m["reward/total"]["mean"],
               "reward_low": m["reward/total"]["low"], "reward_high": m["reward/total"]["high"], "label": m["model"]}
              for m in models if "reward/total" in m and np.isfinite(m["kl"]["mean"])
              and np.isfinite(m["reward/total"]["mean"])]
    if len(points) > 1:
        plots.append(plot_reward_vs_kl(points, out_dir / "reward_vs_kl.png",
                                       title=f"{report['judge']} reward vs KL(policy || reference)"))
    return plots + _training_plots(report, out_dir)


def training_runs(paths: Iterable[str]) -> list[Path]:
    """The training runs the evaluated models come from: the nearest folder above each model (``run/model``,
    ``run/checkpoint-25/model``) that holds a ``metrics.jsonl``, each run once, in order."""
    runs: list[Path] = []
    for path in paths:
        for parent in list(Path(path).parents)[:3]:
            if (parent / "metrics.jsonl").is_file():
                if parent not in runs:
                    runs.append(parent)
                break
    return runs


def _training_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Training curves of every run an evaluated model comes from (:func:`training_runs`)."""
    runs = training_runs(m["path"] for m in report["models"] if m.get("path"))
    plots = []
    for i, run in enumerate(runs):
        name = "training_curves.png" if len(runs) == 1 else f"training_curves_{i + 1}.png"
        try:
            plots.append(plot_training_curves(run / "metrics.jsonl", out_dir / name, title=f"training: {run}"))
        except ValueError as exc:   # nothing numeric to draw, or a bad line: said on the page, not fatal
            report.setdefault("notes", []).append(f"no training curves for {run}: {exc}")
    return plots


def load_prompts(path: str | Path) -> list[Text]:
    """Prompts from a JSONL file of ``{"prompt": ...}`` rows, or from any preference data file
    (:func:`alignkit.data.prompts.load_prompts`)."""
    from alignkit.data.prompts import load_prompts as read

    return read(path)
