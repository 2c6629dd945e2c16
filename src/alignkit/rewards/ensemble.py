"""Reward-model ensembles: a reward and its uncertainty per response.

Members are the heads of one multi-head model (``reward.ensemble: E`` — one backbone, E heads; cheap, but the
members share every feature), several independently seeded models (``train_seeded_ensemble`` — full
diversity, E times the cost), or both. Following Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization" (arXiv:2310.02743) and Eisenstein et al. 2023 (arXiv:2312.09244): the ensemble reward is
the member mean ``mean_e r_e``; its uncertainty is the member standard deviation ``std_e r_e`` (population std,
0 for one member); conservative objectives use ``mean - lambda * std`` (UWO) or ``min_e r_e`` (WCO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.records import Text
from alignkit.rewards.model import head_layout, score_heads, select_group


@dataclass
class EnsembleScores:
    members: torch.Tensor  # [N, M] every member's reward

    @property
    def mean(self) -> torch.Tensor:
        return self.members.mean(-1)

    @property
    def std(self) -> torch.Tensor:
        return self.members.std(-1, correction=0)

    def conservative(self, penalty: float = 1.0) -> torch.Tensor:
        """Uncertainty-weighted optimisation (Coste et al. 2024): ``mean - penalty * std``."""
        return self.mean - penalty * self.std

    @property
    def worst_case(self) -> torch.Tensor:
        """Worst-case optimisation (Coste et al. 2024): the lowest member reward."""
        return self.members.min(-1).values


def score_ensemble(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Text],
                   responses: Sequence[Text], batch_size: int = 32, group: str | None = None) -> EnsembleScores:
    """Every ensemble member's reward: all heads of all ``models`` (for annotator-aware models, ``group``'s heads;
    default the mean over groups)."""
    columns = []
    for model in models:
        heads = score_heads(model, tokenizer, prompts, responses, batch_size)
        columns.append(select_group(heads, head_layout(model).group_index(group)))
    return EnsembleScores(torch.cat(columns, dim=-1))
