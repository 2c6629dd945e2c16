"""Minimal DPO in plain torch: the whole training loop on one page, to read top to bottom.

It shows what a DPO step is once the library's machinery is taken away:

1. load the policy and a frozen copy of it as the reference (``alignkit.models.loading``);
2. read a TRL-style pairs file, one JSON object a line: ``{"prompt": ..., "chosen": ..., "rejected": ...}`` (strings;
   chat messages, as the sandbox writes them, go through the tokenizer's chat template);
3. tokenize prompt and response separately, so the response mask marks exactly the response tokens;
4. compute the summed log-prob of each chosen and rejected response under the policy and the reference
   (``alignkit.models.logps.response_logps``);
5. call the registered DPO loss, ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``
   (``alignkit.losses.get_loss("dpo")``), take an AdamW step, and print the loss, the implicit reward accuracy
   and the reward margin every few steps;
6. evaluate on the training pairs and save the policy with ``save_pretrained``.

From alignkit it imports only ``alignkit.losses`` and ``alignkit.models``, plus ``alignkit.data.collate.Batch``: the
padded batch type that ``response_logps`` takes (this script fills it itself; no other data/ helper is used).

Not here, and what to use instead: the full library equivalent is ``alignkit train recipe=preference loss=dpo``,
whose loop is src/alignkit/engine/loop.py (gradient accumulation, mixed precision, schedules, checkpoints, many
processes) and whose DPO step is src/alignkit/recipes/preference.py (data validation and reports, truncation of
over-long examples, a cached reference, every other registered loss). This script does not truncate: examples must
fit the model.

    python examples/minimal_dpo.py --model PATH --data pairs.jsonl --out runs/minimal-dpo --steps 100
"""

from __future__ import annotations

import argparse
import json
import random

import torch

# Batch is the input type of response_logps (make_batch below fills it); nothing else comes from alignkit.data.
from alignkit.data.collate import Batch
from alignkit.losses import PairInputs, get_loss
from alignkit.models.loading import frozen_copy, load_causal_lm, load_tokenizer
from alignkit.models.logps import response_logps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a causal LM: local directory or hub name")
    parser.add_argument("--data", required=True, help="pairs JSONL: prompt, chosen, rejected")
    parser.add_argument("--out", required=True, help="directory to save the trained policy to")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's inverse temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args()


def tokenize(tokenizer, prompt, response) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), tokenized separately as in alignkit.data.tokenize. A text prompt gets the
    tokenizer's special tokens (e.g. BOS) and a text response is followed by EOS, so the model learns to stop. For
    chat messages the response is what the chat template writes after the prompt's generation prompt."""
    if isinstance(prompt, str):
        return (tokenizer(prompt)["input_ids"],
                tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    assert full_text.startswith(prompt_text), "the chat template's prompt is not a prefix of prompt + response"
    return (tokenizer(prompt_text, add_special_tokens=False)["input_ids"],
            tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"])


def make_batch(pairs: list, indices: list[int], pad_id: int, device: torch.device) -> Batch:
    """Rows chosen, rejected, chosen, rejected, ... (the library's layout: rows 0::2 chosen, 1::2 rejected),
    padded on the right; ``response_mask`` marks the tokens that are scored."""
    rows = [seq for i in indices for seq in pairs[i]]  # seq = (prompt ids, response ids)
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (p, r) in enumerate(rows):
        input_ids[row, :len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[row, :len(p) + len(r)] = 1
        response_mask[row, len(p):len(p) + len(r)] = True
    return Batch(input_ids, attention_mask, response_mask, group=torch.arange(len(indices)).repeat_interleave(2),
                 record_index=torch.tensor(indices), responses_per_record=[2] * len(indices)).to(device)


def dpo_inputs(policy, reference, batch: Batch, reduction: str) -> PairInputs:
    """Reduced response log-probs of chosen and rejected under the policy (with gradients) and the reference."""
    policy_logps = response_logps(policy, batch).reduce(reduction)
    with torch.no_grad():
        ref_logps = response_logps(reference, batch).reduce(reduction)
    return PairInputs(policy_chosen=policy_logps[0::2], policy_rejected=policy_logps[1::2],
                      ref_chosen=ref_logps[0::2], ref_rejected=ref_logps[1::2])


def report(name: str, losses: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
    """Mean loss, implicit reward accuracy (beta * log-ratio of chosen > of rejected) and reward margin."""
    print(f"{name} | loss {losses.mean().item():.6f} | reward acc {metrics['rewards/accuracy'].mean().item():.6f} "
          f"| reward margin {metrics['rewards/margin'].mean().item():.6f}", flush=True)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    # Policy and reference start as the same weights; the reference never changes. float32: plain AdamW on
    # bfloat16 weights loses small updates (the library's engine handles mixed precision).
    tokenizer = load_tokenizer(args.model)
    policy = load_causal_lm(args.model, dtype="float32")
    reference = frozen_copy(policy)
    device = policy.device
    dpo = get_loss("dpo")  # a LossSpec: dpo.reduction is "sum" (summed response log-probs), dpo(x, beta=...) calls it

    with open(args.data, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    pairs = [(tokenize(tokenizer, r["prompt"], r["chosen"]), tokenize(tokenizer, r["prompt"], r["rejected"]))
             for r in records]
    print(f"{len(pairs)} pairs from {args.data}; policy {args.model} on {device}", flush=True)

    # Shuffled passes over the data, cut into batches of --batch-size pairs, until there is one batch per step.
    batches: list[list[int]] = []
    while len(batches) < args.steps:
        order = rng.sample(range(len(pairs)), len(pairs))
        batches += [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    policy.train()
    for step, indices in enumerate(batches[:args.steps]):
        batch = make_batch(pairs, indices, tokenizer.pad_token_id, device)
        out = dpo(dpo_inputs(policy, reference, batch, dpo.reduction), beta=args.beta)  # per-pair losses, metrics
        loss = out.losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            report(f"step {step}", out.losses.detach(), out.metrics)  # metrics before this step's update

    # The trained policy on every training pair (no gradients, eval mode).
    policy.eval()
    losses, metrics = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), args.batch_size):
            batch = make_batch(pairs, list(range(start, min(start + args.batch_size, len(pairs)))),
                               tokenizer.pad_token_id, device)
            out = dpo(dpo_inputs(policy, reference, batch, dpo.reduction), beta=args.beta)
            losses.append(out.losses)
            metrics.append(out.metrics)
    report("final", torch.cat(losses), {k: torch.cat([m[k] for m in metrics]) for k in metrics[0]})

    policy.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved the policy to {args.out}", flush=True)


if __name__ == "__main__":
    main()
