"""Scalar reward models: any Hugging Face causal LM backbone with a linear head on its last non-pad token.

The model is a plain ``AutoModelForSequenceClassification`` (``from_pretrained(path, num_labels=...)``), saved
with ``save_pretrained``; plain ``transformers`` loads it back. Its ``config.pad_token_id`` is the tokenizer's pad
id, so the head reads the last non-pad token (with right padding: the response's final token — its end-of-turn
token for chat data, EOS for text; when pad == EOS it is the token before the final EOS, the same in training
and scoring). ``num_labels`` is ``groups x ensemble`` heads laid out group-major:

- ``ensemble`` E > 1: E independently initialised heads on one backbone, each trained on the same loss (with
  optional per-head bootstrap weights); their mean is the reward and their std its uncertainty;
- ``groups`` (annotator-aware reward model): one head set per annotator group, trained only on that group's
  labels; ``config.id2label`` names the group of every head.

The layout is stored in ``config.alignkit_reward = {"groups": [...], "ensemble": E}`` (absent: one head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.collate import Batch, collate
from alignkit.data.records import DataReport, PreferenceRecord, Text
from alignkit.data.tokenize import tokenize_records
from alignkit.models.loading import check_local, default_device, loading_errors, resolve_dtype
from alignkit.sampling.generate import as_response

LAYOUT_KEY = "alignkit_reward"


# the lengths a reward model was trained at, saved in its config.json (recipe reward) and read by `alignkit eval rm`
LENGTHS_KEY = "alignkit_lengths"


@dataclass(frozen=True)
class HeadLayout:
    """How a reward model's outputs split into annotator groups and ensemble members."""

    groups: tuple[str, ...] = ()
    ensemble: int = 1

    @property
    def num_groups(self) -> int:
        return max(1, len(self.groups))

    @property
    def num_labels(self) -> int:
        return self.num_groups * self.ensemble

    def group_index(self, group: str | None) -> int | None:
        """Index of ``group``'s heads; None (average over groups) when ``group`` is None."""
        if group is None:
            return None
        if group not in self.groups:
            known = ", ".join(self.groups) or "none (the model has no annotator groups)"
            raise KeyError(f"unknown annotator group {group!r}; the model's groups: {known}")
        return self.groups.index(group)

    def as_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "ensemble": self.ensemble}


def head_layout(model: PreTrainedModel) -> HeadLayout:
    stored = getattr(model.config, LAYOUT_KEY, None)
    if not stored:
        return HeadLayout(ensemble=model.config.num_labels)
    return HeadLayout(tuple(stored["groups"]), int(stored["ensemble"]))


def load_reward_model(path: str, tokenizer: PreTrainedTokenizerBase, layout: HeadLayout | None = None,
                      dtype: str = "auto", trust_remote_code: bool = False,
                      device: torch.device | str | None = None) -> PreTrainedModel:
    """A reward model from ``path``: a causal LM (new heads, initialised by ``transformers`` from the global torch
    seed) or a saved reward model (its heads and layout). ``layout`` is required for new heads and checked
    against a saved model's."""
    device = device or default_device()
    check_local(path, "reward model")  # a bad local directory is one line naming what is wrong, not a traceback
    saved: dict[str, Any] | None = None
    if layout is None:
        from transformers import AutoConfig

        with loading_errors("reward model", path):
            saved = getattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), LAYOUT_KEY, None)
        layout = HeadLayout(tuple(saved["groups"]), int(saved["ensemble"])) if saved else HeadLayout()
    labels = {i: (layout.groups[i // layout.ensemble] if layout.groups else "reward") + (
        f"/{i % layout.ensemble}" if layout.ensemble > 1 else "") for i in range(layout.num_labels)}
    with loading_errors("reward model", path):
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=layout.num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
            problem_type="regression", dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, LAYOUT_KEY, layout.as_dict())
    return model.to(device)


def head_rewards(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Rewards of every row from every head: ``[N, groups, ensemble]``."""
    layout = head_layout(model)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits.float().view(-1, layout.num_groups, layout.ensemble)


def as_records(prompts: Sequence[Text], responses: Sequence[Text]) -> list[PreferenceRecord]:
    """One single-response record per (prompt, response); a text response to a chat prompt becomes an assistant
    message."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [PreferenceRecord(prompt=p, responses=[as_response(p, r) if isinstance(r, str) else r],
                             source=f"<response {i}>") for i, (p, r) in enumerate(zip(prompts, responses))]


@torch.no_grad()
def score_heads(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Text],
                responses: Sequence[Text], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Every head's reward for each (prompt, response): ``[N, groups, ensemble]`` on the CPU.

    Text is rendered and tokenized exactly as for training (:mod:`alignkit.data.tokenize`: chat template for
    conversational data, EOS after text responses), so the reward model sees what the policy writes. Over-long
    inputs (default limit: the model's ``max_position_embeddings``) are truncated, the prompt from the left."""
    was_training = model.training
    model.eval()
    max_length = max_length or getattr(model.config, "max_position_embeddings", None) or 1024
    dataset = tokenize_records(tokenizer, as_records(prompts, responses), max_length=max_length,
                               max_prompt_length=max_length // 2, overlength="truncate", report=DataReport())
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset[start: start + batch_size], tokenizer.pad_token_id).to(device)
        out.append(head_rewards(model, batch).cpu())
    model.train(was_training)
    layout = head_layout(model)
    return torch.cat(out) if out else torch.zeros(0, layout.num_groups, layout.ensemble)


def select_group(heads: torch.Tensor, group: int | None) -> torch.Tensor:
    """``[N, G, E]`` -> ``[N, E]``: the heads of one group, or the mean over groups when ``group`` is None."""
    return heads.mean(1) if group is None else heads[:, group]


def score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Text],
          responses: Sequence[Text], batch_size: int = 32, group: str | None = None) -> torch.Tensor:
    """Rewards ``[N]`` of each (prompt, response): the ensemble mean, of ``group``'s heads for an annotator-aware
    model (default: the mean over groups)."""
    heads = score_heads(model, tokenizer, prompts, responses, batch_size)
    return select_group(heads, head_layout(model).group_index(group)).mean(-1)
