"""BCO's underlying distribution matching (UDM): weights that make the undesirable examples' prompts look like
the desirable ones'.

Prompts are embedded with a model (mean of the last hidden state over the prompt tokens); a class-balanced
logistic regression tells desirable-set prompts (1) from undesirable-set prompts (0); each undesirable
example gets the density ratio w = clamp(p / (1 - p), 0.5, 10) with p its predicted probability of coming from
the desirable set; desirable examples keep weight 1. (Jung et al. 2024, BCO; clip range as in TRL's BCO.)
"""

from __future__ import annotations

from typing import Sequence

import torch

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord


@torch.no_grad()
def prompt_embeddings(model: torch.nn.Module, items: Sequence[TokenizedRecord], pad_id: int,
                      batch_size: int = 64) -> torch.Tensor:
    """[N, H] mean of the last hidden state over each prompt's tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(items), batch_size):
        chunk = [TokenizedRecord(i, PreferenceRecord(prompt="", responses=["-"]), item.prompt_ids, [[pad_id]])
                 for i, item in enumerate(items[start: start + batch_size])]
        batch = collate(chunk, pad_id).to(device)
        prompt = (batch.attention_mask.bool() & ~batch.response_mask).to(torch.float32)
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       output_hidden_states=True).hidden_states[-1].float()
        out.append(((hidden * prompt[..., None]).sum(1) / prompt.sum(1, keepdim=True).clamp(min=1)).cpu())
    return torch.cat(out)


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, steps: int = 200) -> torch.nn.Linear:
    """Class-balanced, L2-regularised logistic regression fitted with L-BFGS on standardised features."""
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    x = (features - mean) / std
    positives = labels.sum().clamp(min=1)
    negatives = (1 - labels).sum().clamp(min=1)
    weights = torch.where(labels > 0, len(labels) / (2 * positives), len(labels) / (2 * negatives))
    linear = torch.nn.Linear(x.shape[1], 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = linear(x).squeeze(-1)
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).mean()
        loss = loss + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # fold the standardisation into the layer
        linear.bias -= (linear.weight / std * mean).sum()
        linear.weight /= std
    return linear


def attach_udm_weights(model: torch.nn.Module, items: Sequence[TokenizedRecord], pad_id: int,
                       clip: tuple[float, float] = (0.5, 10.0)) -> torch.Tensor:
    """Set ``item.extra["udm_weight"]`` for every unpaired item; returns the weights."""
    labels = torch.tensor([float(item.record.labels[0]) for item in items])
    if labels.min() == labels.max():
        raise ValueError("distribution matching needs both desirable and undesirable examples")
    features = prompt_embeddings(model, items, pad_id)
    classifier = fit_logistic(features, labels)
    with torch.no_grad():
        p = torch.sigmoid(classifier(features).squeeze(-1)).clamp(1e-6, 1 - 1e-6)
    weights = torch.where(labels > 0, torch.ones_like(p), (p / (1 - p)).clamp(*clip))
    for item, w in zip(items, weights.tolist()):
        item.extra["udm_weight"] = w
    return weights
