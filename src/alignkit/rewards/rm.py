"""``rm:PATH[#options]``: a trained reward model directory as a judge and a reward source.

``rm:PATH`` scores ``r_phi(x, y)``, the Bradley-Terry reward of Ouyang et al. 2022; a model with several heads
(an ensemble and/or annotator groups, :class:`alignkit.rewards.model.HeadLayout`) is reduced over its heads
by the options (parsed by :mod:`alignkit.rewards.spec`): ``#mean`` (default), ``#min``, ``#uwo=L``,
``#group=NAME``, comma-separated (``#group=warm,min``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.models.loading import load_tokenizer
from alignkit.rewards.base import Rewards, SourceJudge, check_lengths
from alignkit.rewards.ensemble import EnsembleScores
from alignkit.rewards.model import head_layout, load_reward_model, score, score_heads, select_group
from alignkit.rewards.spec import Options, RewardSpec, parse_spec, register_reward_kind

RM_REDUCTIONS = ("mean", "min", "uwo=L")
RM_OPTIONS = Options({"mean": "flag", "min": "flag", "uwo": "number", "group": "text"},
                     usage=", ".join(RM_REDUCTIONS) + ", group=NAME", noun="reward-model")


class RewardModelJudge:
    """A trained scalar reward model as a pointwise judge: ``r_phi(x, y)``, the Bradley-Terry reward of
    Ouyang et al. 2022 ("Training language models to follow instructions with human feedback"), read from the
    linear head on the last non-pad token of an ``AutoModelForSequenceClassification``.

    Text is rendered and tokenized exactly as in training (:func:`alignkit.data.tokenize.tokenize_records`:
    chat template for conversations, EOS after text responses; over-long inputs truncated, prompt from the
    left; see :func:`alignkit.rewards.model.score`). A model with several heads (an ensemble or annotator groups) scores the mean
    of its heads.
    """

    objectives: tuple[str, ...] = ()

    def __init__(self, path: str, batch_size: int = 32, trust_remote_code: bool = False, device: Any = None):
        self.name = f"rm:{path}"
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.model = load_reward_model(path, self.tokenizer, trust_remote_code=trust_remote_code, device=device).eval()
        self.batch_size = batch_size

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """``{"total": r_phi(x, y)}`` per (prompt, response): the mean over the model's heads."""
        rewards = score(self.model, self.tokenizer, prompts, responses, self.batch_size)
        return {"total": rewards.numpy().astype(float)}


class RewardModelSource:
    """A trained reward model ``r_phi(x, y)`` (Ouyang et al. 2022's Bradley-Terry reward) with one or several
    heads (:class:`alignkit.rewards.model.HeadLayout`: ensemble members x annotator groups).

    The members ``r_1..r_M`` are all heads (or, with ``group``, that annotator group's heads), and ``total`` is
    (Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"):

    * ``mean``: ``mean_m r_m`` (default; for one head, the head);
    * ``min``: ``min_m r_m`` (worst-case optimisation; over annotator-group heads, MaxMin-RLHF's
      ``min_u r_u``, Chakraborty et al. 2024);
    * ``uwo``: ``mean_m r_m - penalty * std_m r_m`` (uncertainty-weighted optimisation, population std).

    Components, when there are several heads: every head (``head:<label>``, labels from ``config.id2label``,
    e.g. ``head:warm/0``), each group's ensemble mean (``group:<name>``) and the members' ``std``.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "rm", group: str | None = None,
                 reduce: str = "mean", penalty: float = 1.0, batch_size: int = 32):
        if reduce not in ("mean", "min", "uwo"):
            raise ValueError(f"reward-model reduction {reduce!r} is not one of {', '.join(RM_REDUCTIONS)}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.layout = head_layout(model)
        self.group_index = self.layout.group_index(group)   # KeyError listing the model's groups
        self.group, self.reduce, self.penalty, self.batch_size = group, reduce, float(penalty), batch_size
        self.labels = [model.config.id2label.get(i, str(i)) for i in range(self.layout.num_labels)]

    @classmethod
    def from_spec(cls, spec: str | RewardSpec, device: Any = None, loaded: dict | None = None) -> RewardModelSource:
        """``rm:PATH[#option,...]`` with options ``mean`` | ``min`` | ``uwo=L`` and ``group=NAME`` (a string or
        its :class:`~alignkit.rewards.spec.RewardSpec`); ``loaded`` caches (path, device) -> RewardModelJudge so
        several specs on one model load it once."""
        parsed = parse_spec(spec) if isinstance(spec, str) else spec
        if parsed.kind != "rm":
            raise ValueError(f"a reward-model spec is rm:PATH[#option,...], not {parsed.text!r}")
        reduce, penalty, group = "mean", 1.0, None
        for key, value in parsed.options:
            if key in ("mean", "min"):
                reduce = key
            elif key == "uwo":
                reduce, penalty = "uwo", value
            elif key == "group":
                group = value
        cache = {} if loaded is None else loaded
        key = (parsed.argument, str(device))
        if key not in cache:
            cache[key] = RewardModelJudge(parsed.argument, device=device)
        judge = cache[key]
        return cls(judge.model, judge.tokenizer, name=parsed.text, group=group, reduce=reduce, penalty=penalty,
                   batch_size=judge.batch_size)

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """Reduced head rewards (mean / min / mean - penalty * std, Coste et al. 2024) and per-head components."""
        n = check_lengths(prompts, responses, metadata)
        heads = score_heads(self.model, self.tokenizer, list(prompts), list(responses), self.batch_size)  # [N,G,E]
        if self.group_index is None:
            members = EnsembleScores(heads.reshape(n, -1))        # every head (mean = the mean over groups)
        else:
            members = EnsembleScores(select_group(heads, self.group_index))
        if self.reduce == "min":
            total = members.worst_case
        elif self.reduce == "uwo":
            total = members.conservative(self.penalty)
        else:
            total = members.mean
        components: dict[str, np.ndarray] = {}
        if self.layout.num_labels > 1:
            flat = heads.reshape(n, -1).numpy()
            components.update({f"head:{label}": flat[:, i] for i, label in enumerate(self.labels)})
            for g, group in enumerate(self.layout.groups):
                components[f"group:{group}"] = heads[:, g].mean(-1).numpy()
            components["std"] = members.std.numpy()
        return Rewards(total.numpy(), components)


def rm_source(spec: RewardSpec, device: Any = None, cache: dict | None = None) -> RewardModelSource:
    return RewardModelSource.from_spec(spec, device=device, loaded=cache)


def rm_judge(spec: RewardSpec, mode: str = "pointwise", **_: Any) -> RewardModelJudge | SourceJudge:
    """``rm:PATH``: :class:`RewardModelJudge` (the mean over heads); with options, the reduced source as a judge."""
    if not spec.options:
        return RewardModelJudge(spec.argument)
    return SourceJudge(RewardModelSource.from_spec(spec))


register_reward_kind(
    "rm", rm_source, judge=rm_judge, argument="reward-model directory", options=RM_OPTIONS,
    usage="rm:PATH", example="rm:runs/rm#uwo=0.5", directory="a reward model",
    summary="a trained reward model r_phi(x, y); several heads reduced by #mean, #min, #uwo=L, #group=NAME",
    help="rm:PATH (a reward model directory; rm:PATH#min, rm:PATH#uwo=L, rm:PATH#group=NAME)",
    judge_help="rm:PATH (reward model)",
    order=20, paper="Ouyang et al. 2022 (InstructGPT); Coste et al. 2024 (ensembles, UWO); Chakraborty et al. 2024 (MaxMin)")
