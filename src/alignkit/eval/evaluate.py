"""``alignkit eval``: sample from models on held-out prompts, judge them against a baseline, report.

For every model: win rate against the baseline on the same prompts (ties count half) with a 95% interval,
mean judge score in total and per objective with 95% intervals, an estimate of KL(policy || reference) and
response length. The KL estimate is the Monte-Carlo mean of log pi(y|x) - log pi_ref(y|x) over the policy's
own samples (sequence level, nats); it is unbiased, and its interval is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from alignkit.data.records import Text
from alignkit.eval.judges import Judge
from alignkit.eval.stats import mean_ci, pairwise_outcomes, win_rate
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.report.plots import plot_bars
from alignkit.report.tables import format_ci, markdown_table
from alignkit.sampling.generate import Sample, SamplingConfig, generate, score_samples
from alignkit.utils.io import write_json, write_text


@dataclass
class ModelResult:
    name: str
    path: str
    scores: dict[str, np.ndarray]
    samples: list[Sample]
    kl: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, baseline: "ModelResult | None") -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.name, "path": self.path, "n": len(self.samples)}
        if baseline is not None and baseline is not self:
            row["win_rate"] = win_rate(pairwise_outcomes(self.scores["total"], baseline.scores["total"])).as_dict()
        for key, values in self.scores.items():
            mean, low, high = mean_ci(values)
            row[f"reward/{key}"] = {"mean": mean, "low": low, "high": high}
        mean, low, high = mean_ci(self.kl)
        row["kl"] = {"mean": mean, "low": low, "high": high}
        lengths = np.array([len(s.response_ids) for s in self.samples], dtype=float)
        row["length"] = {"mean": float(lengths.mean()), "median": float(np.median(lengths))}
        row["finished"] = float(np.mean([s.finished for s in self.samples]))
        return row


def sample_and_judge(name: str, path: str, prompts: Sequence[Text], judge: Judge, sampling: SamplingConfig,
                     reference: Any, tokenizer: Any, progress: bool) -> ModelResult:
    model = load_causal_lm(path)
    samples = generate(model, tokenizer, prompts, sampling, progress=progress, desc=f"eval {name}")
    policy_logps = score_samples(model, samples, tokenizer.pad_token_id)
    ref_logps = score_samples(reference, samples, tokenizer.pad_token_id)
    scores = judge.score([prompts[s.prompt_index] for s in samples], [s.text for s in samples])
    return ModelResult(name, path, scores, samples, (policy_logps - ref_logps).numpy())


def evaluate(models: dict[str, str], baseline: str, prompts: Sequence[Text], judge: Judge, *,
             reference: str | None = None, sampling: SamplingConfig | None = None, out_dir: str | Path | None = None,
             progress: bool = True, baseline_name: str = "baseline") -> dict[str, Any]:
    """Compare each of ``models`` (name -> directory) with ``baseline`` on ``prompts`` using ``judge``.

    The reference for KL defaults to the baseline. Writes ``eval.json``, ``eval.md`` and a per-objective bar
    chart to ``out_dir`` when given; returns the report as a dict.
    """
    sampling = sampling or SamplingConfig()
    tokenizer = load_tokenizer(baseline)
    reference_model = load_causal_lm(reference or baseline)
    base = sample_and_judge(baseline_name, baseline, prompts, judge, sampling, reference_model, tokenizer, progress)
    results = [sample_and_judge(n, p, prompts, judge, sampling, reference_model, tokenizer, progress)
               for n, p in models.items()]
    report = {
        "judge": judge.name, "prompts": len(prompts), "baseline": baseline_name, "baseline_path": baseline, "reference": reference or baseline,
        "sampling": vars(sampling), "models": [base.summary(None)] + [r.summary(base) for r in results],
        "examples": [{"prompt": _short(prompts[s.prompt_index]), "baseline": s.text,
                      **{r.name: r.samples[i].text for r in results}} for i, s in enumerate(base.samples[:5])],
    }
    if out_dir is not None:
        write_report(report, Path(out_dir), judge)
    return report


def _short(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def table_rows(report: dict[str, Any], objectives: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for m in report["models"]:
        wr = m.get("win_rate")
        row = {"model": m["model"], f"win rate vs {report['baseline']} [95% CI]":
               format_ci(wr["rate"], wr["low"], wr["high"]) if wr else "—",
               "gold total": m["reward/total"]["mean"],
               **{k: m[f"reward/{k}"]["mean"] for k in objectives},
               "KL to ref": m["kl"]["mean"], "length": m["length"]["mean"]}
        rows.append(row)
    return rows


def write_report(report: dict[str, Any], out_dir: Path, judge: Judge) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", report)
    md = [f"# Evaluation ({report['judge']}, {report['prompts']} prompts)", "",
          markdown_table(table_rows(report, judge.objectives)), ""]
    write_text(out_dir / "eval.md", "\n".join(md))
    plot_bars({m["model"]: {k: m[f"reward/{k}"]["mean"] for k in (*judge.objectives, "total")}
               for m in report["models"]}, out_dir / "objectives.png", title="Mean judge score per objective")



def load_prompts(path: str | Path) -> list[Text]:
    """Prompts from a JSONL file of ``{"prompt": ...}`` rows, or from any preference data file."""
    import json

    from alignkit.data.formats import load_records
    from alignkit.data.records import DataError

    path = Path(path)
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON: {exc}", source=f"{path}:{n}") from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise DataError("expected an object with a 'prompt'", source=f"{path}:{n}", field="prompt")
            prompts.append(row["prompt"])
        if prompts:
            return prompts
        raise DataError("no prompts", source=str(path))
    records, _ = load_records(path)
    seen, prompts = set(), []
    for record in records:
        key = str(record.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(record.prompt)
    return prompts
