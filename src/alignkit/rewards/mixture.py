"""An EM mixture of Bradley-Terry reward models over annotators (step 1 of MaxMin-RLHF).

Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences" (arXiv:2402.08925), sec. 5.1:
annotators belong to K latent groups, each with its own reward ``r_k``. With pairs ``i`` labelled by annotator
``a(i)`` and ``d_i = phi(chosen_i) - phi(rejected_i)``:

    E-step:  q(a, k) ∝ pi_k * prod_{i: a(i) = a} sigmoid(theta_k . d_i)
    M-step:  pi_k = mean_a q(a, k);
             theta_k = argmin_theta  sum_i q(a(i), k) * -log sigmoid(theta . d_i) + (l2 / 2) * ||theta||^2

Each annotator is assigned as a whole (all its pairs share one posterior), which is what lets a handful of noisy
pairs per annotator add up to a confident assignment. The MaxMin policy step (maximise the minimum group
reward) is not part of this module.

Component models are *linear BT models on fixed features* ``phi`` so that EM runs in seconds on a CPU:
:func:`token_count_features` (counts of each token id in the rendered response — no model needed) or
:func:`embedding_features` (the last-token hidden state of any frozen backbone, e.g. a trained reward model).
Refitting full neural reward models in every M-step is the paper's general form and is not done here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.collate import collate
from alignkit.data.records import DataReport, Text
from alignkit.data.tokenize import tokenize_records
from alignkit.rewards.model import as_records


# ------------------------------------------------------------------------------------------------ features
def token_count_features(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Text], responses: Sequence[Text],
                         max_length: int = 1024) -> torch.Tensor:
    """``[N, vocab]``: how often each token id occurs in the response as alignkit tokenizes it."""
    dataset = tokenize_records(tokenizer, as_records(prompts, responses), max_length=max_length,
                               max_prompt_length=max_length // 2, report=DataReport())
    features = torch.zeros(len(dataset), len(tokenizer))
    for row, item in enumerate(dataset):
        ids = torch.tensor(item.response_ids[0])
        features[row].index_add_(0, ids, torch.ones(len(ids)))
    return features


@torch.no_grad()
def embedding_features(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Text],
                       responses: Sequence[Text], batch_size: int = 32, max_length: int = 1024) -> torch.Tensor:
    """``[N, hidden]``: the frozen backbone's last-layer hidden state at each sequence's last token."""
    dataset = tokenize_records(tokenizer, as_records(prompts, responses), max_length=max_length,
                               max_prompt_length=max_length // 2, report=DataReport())
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset[start: start + batch_size], tokenizer.pad_token_id).to(device)
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                       use_cache=False).hidden_states[-1]
        last = batch.attention_mask.sum(-1) - 1
        out.append(hidden[torch.arange(hidden.shape[0], device=device), last].float().cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ EM
@dataclass
class BTMixture:
    """A fitted mixture: component weights ``theta [K, D]``, priors ``[K]``, posteriors ``[A, K]`` per annotator."""

    theta: torch.Tensor
    prior: torch.Tensor
    annotators: list[str]
    posterior: torch.Tensor
    log_likelihood: list[float] = field(default_factory=list)  # data log-likelihood after every iteration

    def assignments(self) -> dict[str, int]:
        """Each annotator's most probable component."""
        return dict(zip(self.annotators, self.posterior.argmax(-1).tolist()))

    def rewards(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, K]``: every component's reward of each response's features."""
        return features @ self.theta.T


def fit_components(diffs: torch.Tensor, weights: torch.Tensor, l2: float, init: torch.Tensor) -> torch.Tensor:
    """M-step: K weighted, L2-regularised linear BT fits (one L-BFGS problem; the K fits are independent)."""
    theta = init.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        nll = (weights * -F.logsigmoid(diffs @ theta.T)).sum()
        loss = (nll + 0.5 * l2 * (theta ** 2).sum()) / diffs.shape[0]
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach()


def _em(diffs: torch.Tensor, owner: torch.Tensor, posterior: torch.Tensor, iterations: int, l2: float,
        tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    theta = torch.zeros(posterior.shape[1], diffs.shape[1], dtype=diffs.dtype)
    history: list[float] = []
    for _ in range(iterations):
        theta = fit_components(diffs, posterior[owner], l2, theta)            # M-step
        prior = posterior.mean(0)
        pair_ll = F.logsigmoid(diffs @ theta.T)                               # [N, K]
        joint = torch.zeros_like(posterior).index_add_(0, owner, pair_ll) + prior.clamp(min=1e-12).log()
        posterior = joint.softmax(-1)                                         # E-step
        history.append(float(torch.logsumexp(joint, -1).sum()))
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-2]):
            break
    return theta, prior, posterior, history


def fit_bt_mixture(diffs: torch.Tensor, annotators: Sequence[str], components: int = 2, *, iterations: int = 50,
                   l2: float = 10.0, restarts: int = 3, seed: int = 0, tol: float = 1e-6) -> BTMixture:
    """EM for a K-component BT mixture over annotators, from feature differences ``diffs [N, D]`` (chosen minus
    rejected) and each pair's annotator. Posteriors start from seeded random Dirichlet(1) draws per annotator;
    the restart with the highest final log-likelihood is kept.

    ``l2`` must be strong enough that a component cannot memorise the pairs of the annotators it holds: with
    ~80 pairs per annotator and ~800 token-count features, l2 = 1 overfits (each component fits an arbitrary
    half of the annotators; purity 0.5 in the sandbox) while l2 = 10 or 30 recovers the groups (purity 1.0 on
    five data seeds). Overfitting raises the likelihood, so restarts cannot catch it."""
    if len(annotators) != diffs.shape[0]:
        raise ValueError(f"{diffs.shape[0]} pairs but {len(annotators)} annotator ids")
    names = sorted(set(annotators))
    owner = torch.tensor([names.index(a) for a in annotators])
    diffs = diffs.double()
    best: BTMixture | None = None
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(seed * 1000 + restart)
        start = -torch.rand(len(names), components, generator=generator, dtype=diffs.dtype).log()
        theta, prior, posterior, history = _em(diffs, owner, start / start.sum(-1, keepdim=True), iterations, l2, tol)
        if best is None or history[-1] > best.log_likelihood[-1]:
            best = BTMixture(theta.float(), prior.float(), names, posterior.float(), history)
    assert best is not None
    return best


def cluster_purity(predicted: Sequence[object], truth: Sequence[object]) -> float:
    """Share of items whose cluster's majority true label is their own: ``sum_c max_t |c ∩ t| / N``."""
    if len(predicted) != len(truth) or not predicted:
        raise ValueError("predicted and truth must be non-empty and of equal length")
    by_cluster: dict[object, Counter] = {}
    for p, t in zip(predicted, truth):
        by_cluster.setdefault(p, Counter())[t] += 1
    return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(predicted)
