"""examples/minimal_dpo.py, run as a user would (a subprocess) on the tiny sandbox world's random-init Llama.

The test recomputes what the script prints on its own: response log-probs from the library's tokenization
(alignkit.data) and a plain forward pass with full logits, and the DPO loss from its formula
-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), not from the loss registry or models.logps.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "minimal_dpo.py"
LINE = re.compile(r"^(step \d+|final) \| loss (\S+) \| reward acc (\S+) \| reward margin (\S+)$", re.MULTILINE)
BETA = 0.1


def run_script(model: Path, data: Path, out: Path, *args: str) -> dict[str, tuple[float, float, float]]:
    """Run the script; its report lines by name ("step 0", ..., "final") -> (loss, accuracy, margin)."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), "--data", str(data),
                             "--out", str(out), "--beta", str(BETA), *args],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return {m[0]: (float(m[1]), float(m[2]), float(m[3])) for m in LINE.findall(result.stdout)}


def summed_response_logps(model, items, pad_id: int) -> torch.Tensor:
    """[B, 2] summed log-probs of (chosen, rejected) from full logits, one sequence at a time."""
    out = torch.zeros(len(items), 2, dtype=torch.float64)
    with torch.no_grad():
        for b, item in enumerate(items):
            for k in range(2):
                ids, mask = item.sequence(item.record.ranking[k])
                logits = model(input_ids=torch.tensor([ids])).logits[0].double()
                logps = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
                out[b, k] = logps[torch.tensor(mask[1:], dtype=torch.bool)].sum()
    return out


def dpo_formula(policy: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """Mean DPO loss, implicit reward accuracy and reward margin of [B, 2] (chosen, rejected) log-probs."""
    ratios = BETA * (policy - reference)
    margin = ratios[:, 0] - ratios[:, 1]
    loss = -torch.nn.functional.logsigmoid(margin)
    return loss.mean().item(), (margin > 0).double().mean().item(), margin.mean().item()


@pytest.fixture(scope="module")
def text_pairs(tiny_pairs, tmp_path_factory) -> Path:
    """The sandbox's conversational pairs as TRL-style text pairs (prompt, chosen, rejected strings)."""
    path = tmp_path_factory.mktemp("minimal_dpo") / "pairs.jsonl"
    rows = [json.loads(line) for line in tiny_pairs.read_text().splitlines()]
    path.write_text("".join(json.dumps({key: row[key][0]["content"] for key in ("prompt", "chosen", "rejected")}) + "\n"
                            for row in rows[:32]))
    return path


def test_minimal_dpo_trains_dpo(tiny_world, text_pairs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.data.formats import load_records
    from alignkit.data.tokenize import tokenize_records

    base, out = tiny_world / "base", tmp_path / "out"
    lines = run_script(base, text_pairs, out, "--steps", "24", "--batch-size", "8", "--lr", "3e-3",
                       "--log-every", "8", "--seed", "0")
    assert {"step 0", "step 8", "step 16", "step 23", "final"} <= set(lines)

    # (a) the first step: policy == reference, so every log-ratio is 0 and the loss is -log sigmoid(0) = log 2.
    tokenizer = AutoTokenizer.from_pretrained(base)
    records, _ = load_records(text_pairs)
    items = tokenize_records(tokenizer, records)
    assert len(items) == 32
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    ref_logps = summed_response_logps(reference, items, tokenizer.pad_token_id)
    init_loss, init_acc, init_margin = dpo_formula(ref_logps, ref_logps)
    assert init_loss == pytest.approx(math.log(2), abs=1e-12)
    assert lines["step 0"] == pytest.approx((init_loss, init_acc, init_margin), abs=1e-5)

    # (c) the saved policy loads with from_pretrained and was changed by training.
    policy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    assert any(not torch.equal(p, q) for p, q in zip(policy.state_dict().values(), reference.state_dict().values()))

    # The script's final report is the DPO formula on the saved policy against the base model, recomputed here
    # with the library's tokenization and full logits (a check of its tokenization, log-probs and loss call).
    policy_logps = summed_response_logps(policy, items, tokenizer.pad_token_id)
    final_loss, final_acc, final_margin = dpo_formula(policy_logps, ref_logps)
    assert lines["final"][0] == pytest.approx(final_loss, rel=1e-4, abs=1e-5)
    assert lines["final"][1] == pytest.approx(final_acc, abs=1e-6)
    assert lines["final"][2] == pytest.approx(final_margin, rel=1e-4, abs=1e-5)

    # (b) training raised the implicit reward margin (chosen log-ratio minus rejected log-ratio) and accuracy.
    assert final_margin > init_margin + 0.1, (final_margin, init_margin)
    assert final_acc >= 0.75 > init_acc, (final_acc, init_acc)
    assert final_loss < init_loss - 0.05, (final_loss, init_loss)


def test_minimal_dpo_reads_chat_messages(tiny_world, tiny_pairs, tmp_path):
    """The sandbox's own files (prompt and responses as chat messages) go through the chat template."""
    lines = run_script(tiny_world / "base", tiny_pairs, tmp_path / "out", "--steps", "1", "--batch-size", "4")
    assert lines["step 0"] == pytest.approx((math.log(2), 0.0, 0.0), abs=1e-6)
    assert (tmp_path / "out" / "config.json").is_file()


def test_minimal_dpo_imports_only_losses_models_and_data():
    """The script is the reading entrance: no engine, recipes or config, only alignkit.losses / models / data."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            modules.add(node.module)
    alignkit = {name for name in modules if name == "alignkit" or name.startswith("alignkit.")}
    allowed = ("alignkit.losses", "alignkit.models", "alignkit.data")
    assert alignkit, "the script should use alignkit's losses and models"
    assert all(any(name == a or name.startswith(a + ".") for a in allowed) for name in alignkit), sorted(alignkit)
    assert any(name.startswith("alignkit.losses") for name in alignkit)
    assert any(name.startswith("alignkit.models") for name in alignkit)
    assert "importlib" not in modules and "__import__" not in SCRIPT.read_text(encoding="utf-8")
