"""alignkit's losses against TRL's own code on identical inputs: per-example values and gradients, float64, 1e-6.

TRL is a test-only dependency (``pip install trl==1.16.0``); without it this module is skipped. Checked against
TRL 1.16.0, where the losses live in:

* DPO family (``sigmoid``, ``robust``, ``ipo``, ``hinge``, ``nca_pair``, ``exo_pair``, ``apo_zero``, ``apo_down``,
  ``aot``, ``aot_unpaired``, ``bco_pair``, ``sppo_hard``, ``sigmoid_norm``, ``discopop``): inline in
  ``trl.trainer.dpo_trainer.DPOTrainer._compute_loss`` (TRL 1.x has no separate ``dpo_loss`` method). It runs the
  model itself, so we call the unbound method with a stand-in trainer (:func:`dpo_standin`) and a stand-in model
  (:class:`TableLM`) that returns given per-token log-probs; reference log-probs come "precomputed" in the batch.
  It returns only the batch mean, so per-example values come from one-example batches.
* KTO: inline in ``trl.trainer.kto_trainer.KTOTrainer._compute_loss`` (``trl.KTOTrainer``; the
  ``trl.experimental.kto`` path is a deprecated alias). Same stand-ins (:func:`kto_standin`).
* CPO / SimPO: ``trl.experimental.cpo.CPOTrainer.cpo_loss`` (per-example losses), called with a stand-in; the SFT
  term lives in ``CPOTrainer.concatenated_forward`` and is checked through ``get_batch_loss_metrics`` with a
  stand-in LM that returns given logits (:class:`LogitsLM`).
* ORPO: ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss``.
* BCO (unpaired): TRL no longer has a BCO trainer (``trl.experimental.bco`` was removed in huggingface/trl#7136);
  alignkit's ``bco`` is checked against DPOTrainer's ``bco_pair`` (its paired form) instead.

Intentional differences found (those visible in loss values are asserted, so a change on either side shows up):

1. Name mapping: alignkit ``dpo`` = TRL ``sigmoid``; ``ln_dpo`` (alias ``sigmoid_norm``) = ``sigmoid_norm``;
   alignkit ``aot`` = TRL ``aot`` and alignkit ``aot_pair`` = TRL ``aot_unpaired`` (TRL < 1.0 called it
   ``aot_pair``); alignkit ``orpo``'s ``lam`` = TRL ORPO ``beta``; alignkit ``simpo``'s ``gamma`` = TRL CPO
   ``simpo_gamma`` (TRL subtracts ``simpo_gamma / beta`` inside ``beta * (.)``, which is the same thing).
2. cDPO: TRL 1.x's DPO ``sigmoid`` ignores ``label_smoothing`` (it is only read by ``robust``, ``exo_pair`` and the
   AOT losses), so alignkit ``cdpo`` cannot be reached through ``sigmoid`` any more, whatever cdpo's docstring
   says. It equals TRL's ``aot`` on a one-pair batch (sorting one value is the identity) and CPO's ``sigmoid``
   with ``label_smoothing`` on the log-ratios.
3. ``exo_pair``: TRL takes epsilon from ``label_smoothing`` and refuses 0 (no 1e-3 fallback in 1.x); alignkit's
   ``epsilon`` defaults to 1e-3.
4. ``ipo`` / ``sigmoid_norm`` / ``simpo`` / ``orpo`` use per-token-mean log-probs. TRL divides summed log-ratios by
   the completion length (DPO) or averages in ``get_batch_logps`` (CPO); alignkit receives per-token means (its
   spec's ``reduction == "mean"``). The tests build both from the same per-token log-probs.
5. ``sppo_hard``: TRL sums the two squared errors; alignkit ``sppo(hard=True)`` on K = 2 rankings averages over
   the K responses, so TRL = 2 * alignkit (values and gradients).
6. ``bco_pair`` / ``bco``: TRL 1.x's ``bco_pair`` has no reward shift (delta = 0). alignkit subtracts delta = the
   running, count-weighted mean of every implicit reward seen so far (``RunningMean``); without state delta = 0
   and it equals TRL exactly. With state it equals TRL's ``bco_pair`` evaluated with both reference log-probs
   raised by delta / beta (first call: delta = this batch's mean reward; second call: the mean over both
   batches). TRL < 1.0 instead fed one scalar per batch (the batch mean) to ``RunningMoments``, i.e. an unweighted
   mean of batch means; the two agree when batches have equal size. TRL has no unpaired BCO and no UDM weights
   any more, so ``bco``'s ``udm`` weights are not compared.
7. KTO: TRL concatenates [desirable..., undesirable...] losses and returns their mean; alignkit keeps the input
   order. Values are compared example by example, the batch mean and its gradient as a whole.
8. CPO's SFT term: TRL adds ``cpo_alpha`` times one token-level NLL over all chosen tokens of the batch; alignkit
   adds ``alpha`` times each example's per-token-mean NLL, then the recipe averages examples. Equal when all chosen
   responses have the same length; otherwise the gap is exactly alpha * (token mean - mean of per-example means).
9. ORPO's SFT term: TRL's NLL covers prompt and response tokens (token-level over the batch); alignkit's
   ``chosen_nll`` is the response's per-token-mean NLL. Only the odds-ratio term is compared (``chosen_nll = 0``).
10. ORPO precision: TRL's ``odds_ratio_loss`` casts its inputs to float32. The float64 comparison passes tensors
    whose ``.float()`` is the identity (:class:`KeepFloat64`); the unmodified float32 path is checked at float32
    tolerance. At a per-token-mean log-prob of exactly 0, TRL's log(1 - exp(0)) is -inf while alignkit clamps.
11. ``discopop``: TRL's tau is ``args.discopop_tau``. TRL evaluates sigma(z / tau) * exp(-z) literally, which is
    0 * inf = NaN once z = beta * D < -710; alignkit computes exp(ls(z / tau) - z) and stays finite. They agree
    wherever TRL is finite.

Fixed: ``reference_free.log1mexp`` used to clamp its argument at -1e-6, so ORPO was inexact for per-token-mean
log-probs in (-1e-6, 0); it now clamps at -1e-20 (finite at exactly 0, where TRL gives -inf) and
:func:`test_orpo_near_zero_logps_match_trl` checks it.
"""

from __future__ import annotations

import math
import os
import types
import zlib
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
pytest.importorskip("trl", reason="TRL is a test-only dependency: pip install trl==1.16.0")

from trl import DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

from alignkit.losses import PairInputs, RankedInputs, UnpairedInputs, get_loss  # noqa: E402
from alignkit.losses.state import RunningMean  # noqa: E402

F64 = torch.float64
CPU = torch.device("cpu")
RTOL = ATOL = 1e-6


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL,
                 atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d leaf for every leaf; zeros where the loss does not depend on it."""
    out = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(out, leaves)]


# --------------------------------------------------------------------------------------------------------------
# Inputs: per-token log-probs from which both sides build their (summed or per-token-mean) sequence log-probs.
# --------------------------------------------------------------------------------------------------------------

L = 6  # response tokens at most; sequences are [prompt token, L response positions]


@dataclass
class Responses:
    """``rows`` responses: policy per-token log-probs ``tok`` [rows, L] (the leaf we differentiate), response
    mask [rows, L] (a prefix), summed reference log-probs ``ref`` [rows]. For pairs, rows 0..n-1 are chosen and
    n..2n-1 rejected."""

    tok: torch.Tensor
    mask: torch.Tensor
    ref: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1).to(F64)

    def logps(self, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy, reference) sequence log-probs: summed, or per-token mean."""
        total = (self.tok * self.mask).sum(1)
        if reduction == "sum":
            return total, self.ref
        return total / self.lengths, self.ref / self.lengths


def make_pairs(seed: int, n: int = 12) -> Responses:
    """Random pairs plus: pair 0 an exact tie (chosen = rejected: every margin exactly 0), pairs 1 and 2 extreme
    margins (D = +1800 and -1800, with log-ratios of +-900)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (2 * n,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    tok = -(torch.rand(2 * n, L, generator=g, dtype=F64) * 3 + 0.01)
    ref = (-(torch.rand(2 * n, L, generator=g, dtype=F64) * 3 + 0.01) * mask).sum(1)
    tok[n], mask[n], ref[n] = tok[0], mask[0], ref[0]                 # exact tie
    for i, (w, l) in {1: (-1e-3, -150.0), 2: (-150.0, -1e-3)}.items():
        mask[i] = mask[n + i] = True
        tok[i], tok[n + i] = w, l                                     # policy: +-1800 summed log-prob gap ...
        ref[i], ref[n + i] = l * L, w * L                             # ... and the reference the other way
    return Responses(tok.requires_grad_(), mask, ref)


def pair_inputs(d: Responses, reduction: str) -> PairInputs:
    policy, ref = d.logps(reduction)
    n = len(policy) // 2
    return PairInputs(policy[:n], policy[n:], ref[:n], ref[n:])


# --------------------------------------------------------------------------------------------------------------
# Stand-ins for what TRL's trainers read: a "model" and the trainer attributes, nothing else.
# --------------------------------------------------------------------------------------------------------------

ACCELERATOR = SimpleNamespace(device=CPU, gather=lambda t: t, gather_for_metrics=lambda t: t)  # one process


class TableLM:
    """Stand-in for a causal LM with TRL's fused LM head: ``model(input_ids=..., labels=..., fused_lm_head=True)``
    returns ``log_probs`` [B, T - 1], the per-token log-probs of the next-token labels, 0 where the label is -100
    (as ``trl.trainer.utils.add_fused_lm_head`` does). Row r of the batch carries its index into ``table`` in
    ``input_ids[r, 0]`` (the prompt token); the logging-only fields are zeros."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, labels, fused_lm_head=False, **_):
        assert fused_lm_head
        log_probs = self.table[input_ids[:, 0]] * (labels[:, 1:] != -100)
        zeros = torch.zeros(log_probs.shape, dtype=F64)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               log_sum_sq_probs=zeros)


def sequences(table_rows: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / completion_mask for responses ``table_rows`` after a one-token prompt."""
    input_ids = torch.zeros(len(table_rows), L + 1, dtype=torch.long)
    input_ids[:, 0] = table_rows
    completion_mask = torch.zeros_like(input_ids)
    completion_mask[:, 1:] = mask[table_rows]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "completion_mask": completion_mask}


def trainer_state() -> dict:
    """Bookkeeping attributes ``_compute_loss`` writes metrics into."""
    return dict(model=SimpleNamespace(training=True), accelerator=ACCELERATOR, aux_loss_enabled=False,
                precompute_ref_logps=True, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                _total_train_tokens=0, _tp_size=1)


def dpo_standin(loss_type: str, beta: float, label_smoothing: float = 0.0, discopop_tau: float = 0.05
                ) -> SimpleNamespace:
    """What ``DPOTrainer._compute_loss`` reads: one loss type with weight 1, standard DPO (reverse KL, no LD-DPO
    length weighting, no WPO weighting), reference log-probs precomputed in the batch; ``args`` only for
    ``discopop``'s tau."""
    return SimpleNamespace(**trainer_state(), beta=beta, loss_types=[loss_type], loss_weights=[1.0],
                           label_smoothing=label_smoothing, ld_alpha=None, f_divergence_type="reverse_kl",
                           f_alpha_divergence_coef=1.0, use_weighting=False,
                           args=SimpleNamespace(discopop_tau=discopop_tau))


def trl_dpo(loss_type: str, d: Responses, idx: torch.Tensor, beta: float, label_smoothing: float = 0.0,
            ref_shift: float = 0.0, discopop_tau: float = 0.05) -> torch.Tensor:
    """TRL's DPO batch loss (mean over pairs ``idx``) on the pairs' per-token log-probs."""
    n = len(d.ref) // 2
    batch = sequences(torch.cat([idx, idx + n]), d.mask)
    batch["ref_chosen_logps"] = d.ref[idx] + ref_shift
    batch["ref_rejected_logps"] = d.ref[idx + n] + ref_shift
    return DPOTrainer._compute_loss(dpo_standin(loss_type, beta, label_smoothing, discopop_tau), TableLM(d.tok),
                                    batch, return_outputs=False)


def trl_dpo_per_example(loss_type: str, d: Responses, **kw) -> torch.Tensor:
    n = len(d.ref) // 2
    return torch.stack([trl_dpo(loss_type, d, torch.tensor([i]), **kw) for i in range(n)])


# --------------------------------------------------------------------------------------------------------------
# DPO family
# --------------------------------------------------------------------------------------------------------------

# (TRL loss_type, TRL label_smoothing, alignkit loss, alignkit params)
DPO_CASES = {
    "sigmoid": ("sigmoid", 0.0, "dpo", {}),
    "robust": ("robust", 0.1, "robust", {"label_smoothing": 0.1}),
    "robust-0.3": ("robust", 0.3, "robust", {"label_smoothing": 0.3}),
    "ipo": ("ipo", 0.0, "ipo", {}),
    "hinge": ("hinge", 0.0, "hinge", {}),
    "nca_pair": ("nca_pair", 0.0, "nca_pair", {}),
    "exo_pair": ("exo_pair", 1e-3, "exo_pair", {"epsilon": 1e-3}),
    "exo_pair-0.2": ("exo_pair", 0.2, "exo_pair", {"epsilon": 0.2}),
    "apo_zero": ("apo_zero", 0.0, "apo_zero", {}),
    "apo_down": ("apo_down", 0.0, "apo_down", {}),
    "sigmoid_norm": ("sigmoid_norm", 0.0, "ln_dpo", {}),
    "bco_pair": ("bco_pair", 0.0, "bco_pair", {}),   # no state: delta = 0, as in TRL 1.x
}


def check_dpo_family(case: str, trl_type: str, name: str, beta: float, params: dict, **trl_params) -> None:
    spec = get_loss(name)
    d = make_pairs(seed=zlib.crc32(case.encode()) % 1000)
    n = len(d.ref) // 2

    mine = spec(pair_inputs(d, spec.reduction), beta=beta, **params)
    theirs = trl_dpo_per_example(trl_type, d, beta=beta, **trl_params)
    assert_close(mine.losses, theirs, f"{case} per-example losses")
    assert torch.isfinite(mine.losses).all()

    trl_mean = trl_dpo(trl_type, d, torch.arange(n), beta=beta, **trl_params)
    assert_close(mine.losses.mean(), trl_mean, f"{case} batch mean")
    (g_mine,), (g_trl,) = grads(mine.losses.mean(), [d.tok]), grads(trl_mean, [d.tok])
    assert g_mine.abs().sum() > 0
    assert_close(g_mine, g_trl, f"{case} gradient w.r.t. the per-token log-probs")


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_family_matches_trl(case, beta):
    trl_type, smoothing, name, params = DPO_CASES[case]
    check_dpo_family(case, trl_type, name, beta, params, label_smoothing=smoothing)


@pytest.mark.parametrize("tau", [0.05, 0.5])
@pytest.mark.parametrize("beta", [0.05, 0.1])
def test_discopop_matches_trl(beta, tau):
    """TRL's tau is ``args.discopop_tau``. |beta * D| stays below ~700 here: see the overflow test below."""
    check_dpo_family("discopop", "discopop", "discopop", beta, {"tau": tau}, discopop_tau=tau)


def test_discopop_extreme_margin_alignkit_finite_where_trl_overflows():
    """TRL computes sigma(z / tau) * exp(-z): for z < -710 exp overflows to inf and 0 * inf = NaN. alignkit
    writes the product as exp(ls(z / tau) - z) and stays finite (the loss tends to -z, DPO's)."""
    d = make_pairs(seed=12)
    n = len(d.ref) // 2
    x = pair_inputs(d, "sum")
    mine = get_loss("discopop")(x, beta=1.0, tau=0.05).losses   # pair 2: z = -1800
    assert torch.isfinite(mine).all()
    assert mine[2].item() == pytest.approx(-x.margin[2].item(), rel=1e-12)
    theirs = trl_dpo("discopop", d, torch.tensor([2]), beta=1.0, discopop_tau=0.05)
    assert not torch.isfinite(theirs)
    rest = torch.tensor([i for i in range(n) if i != 2])
    assert_close(mine[rest].mean(), trl_dpo("discopop", d, rest, beta=1.0, discopop_tau=0.05), "other pairs")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("names", [("aot", "aot"), ("aot_pair", "aot_unpaired")])
def test_aot_matches_trl(names, label_smoothing):
    """Batch-coupled (sorting): compared as batch mean and gradient."""
    name, trl_type = names
    d = make_pairs(seed=7)
    n = len(d.ref) // 2
    mine = get_loss(name)(pair_inputs(d, "sum"), beta=0.1, label_smoothing=label_smoothing).losses.mean()
    theirs = trl_dpo(trl_type, d, torch.arange(n), beta=0.1, label_smoothing=label_smoothing)
    assert_close(mine, theirs, f"{name} batch mean")
    assert_close(grads(mine, [d.tok])[0], grads(theirs, [d.tok])[0], f"{name} gradient")


def test_cdpo_matches_trl_aot_on_single_pairs():
    """TRL 1.x's only conservative-DPO form inside DPOTrainer: ``aot`` with one pair (sort = identity)."""
    d = make_pairs(seed=3)
    mine = get_loss("cdpo")(pair_inputs(d, "sum"), beta=0.1, label_smoothing=0.2).losses
    theirs = trl_dpo_per_example("aot", d, beta=0.1, label_smoothing=0.2)
    assert_close(mine, theirs, "cdpo vs TRL aot on one-pair batches")
    assert_close(grads(mine.sum(), [d.tok])[0], grads(theirs.sum(), [d.tok])[0], "cdpo gradient")


def test_trl_sigmoid_ignores_label_smoothing():
    """Why cdpo is not compared with TRL's ``sigmoid``: in TRL 1.x it is plain DPO whatever label_smoothing is."""
    d = make_pairs(seed=4)
    n = len(d.ref) // 2
    smoothed = trl_dpo("sigmoid", d, torch.arange(n), beta=0.1, label_smoothing=0.2)
    assert_close(smoothed, get_loss("dpo")(pair_inputs(d, "sum"), beta=0.1).losses.mean(), "TRL sigmoid")
    cdpo = get_loss("cdpo")(pair_inputs(d, "sum"), beta=0.1, label_smoothing=0.2).losses.mean()
    assert not torch.isclose(smoothed, cdpo, rtol=1e-3)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sppo_hard_is_twice_alignkit_sppo(beta):
    d = make_pairs(seed=5)
    n = len(d.ref) // 2
    policy, ref = d.logps("sum")
    ranked = RankedInputs(policy=torch.stack([policy[:n], policy[n:]], 1), valid=torch.ones(n, 2, dtype=torch.bool),
                          reference=torch.stack([ref[:n], ref[n:]], 1))
    mine = get_loss("sppo")(ranked, beta=beta, hard=True).losses
    theirs = trl_dpo_per_example("sppo_hard", d, beta=beta)
    assert_close(2 * mine, theirs, "2 * sppo(hard) vs TRL sppo_hard")
    trl_mean = trl_dpo("sppo_hard", d, torch.arange(n), beta=beta)
    assert_close(2 * grads(mine.mean(), [d.tok])[0], grads(trl_mean, [d.tok])[0], "sppo gradient")


def test_bco_pair_running_mean_is_a_reference_shift_of_trl_bco_pair():
    """alignkit's delta (running mean of all rewards) = TRL's delta-free bco_pair with references raised by
    delta / beta; and alignkit's mean is count-weighted over everything seen."""
    beta = 0.1
    first, second = make_pairs(seed=8), make_pairs(seed=9, n=5)   # batches of different sizes
    state = RunningMean()
    seen = []
    for d in (first, second):
        n = len(d.ref) // 2
        x = pair_inputs(d, "sum")
        x.state = state
        out = get_loss("bco_pair")(x, beta=beta)
        seen.append(beta * torch.cat([x.chosen_logratios, x.rejected_logratios]).detach())
        delta = torch.cat(seen).mean().item()                 # every reward so far, count-weighted
        assert out.metrics["delta"][0].item() == pytest.approx(delta, abs=1e-12)
        assert delta != 0.0
        theirs = trl_dpo_per_example("bco_pair", d, beta=beta, ref_shift=delta / beta)
        assert_close(out.losses, theirs, "bco_pair with running delta")
        trl_mean = trl_dpo("bco_pair", d, torch.arange(n), beta=beta, ref_shift=delta / beta)
        assert_close(grads(out.losses.mean(), [d.tok])[0], grads(trl_mean, [d.tok])[0], "bco_pair gradient")
        # TRL 1.x itself applies no shift, so with state the two differ
        assert not torch.allclose(out.losses, trl_dpo_per_example("bco_pair", d, beta=beta), rtol=1e-3)


def test_bco_unpaired_matches_trl_bco_pair():
    """The unpaired BCO loss of a chosen (desirable) and a rejected (undesirable) response sums to TRL's
    bco_pair; the running delta (first and second call) enters as the same reference shift."""
    beta = 0.1
    state = RunningMean()
    seen = []
    for seed, n in ((10, 12), (11, 4)):
        d = make_pairs(seed=seed, n=n)
        policy, ref = d.logps("sum")
        labels = torch.cat([torch.ones(n), torch.zeros(n)]).long()
        out = get_loss("bco")(UnpairedInputs(policy, labels, ref, state=state), beta=beta)
        seen.append((beta * (policy - ref)).detach())
        delta = torch.cat(seen).mean().item()
        assert out.metrics["delta"][0].item() == pytest.approx(delta, abs=1e-12)
        paired = out.losses[:n] + out.losses[n:]
        theirs = trl_dpo_per_example("bco_pair", d, beta=beta, ref_shift=delta / beta)
        assert_close(paired, theirs, "bco (desirable + undesirable) vs TRL bco_pair")
        trl_mean = trl_dpo("bco_pair", d, torch.arange(n), beta=beta, ref_shift=delta / beta)
        # alignkit averages 2n unpaired losses, TRL n paired ones
        assert_close(2 * grads(out.losses.mean(), [d.tok])[0], grads(trl_mean, [d.tok])[0], "bco gradient")


# --------------------------------------------------------------------------------------------------------------
# KTO
# --------------------------------------------------------------------------------------------------------------


def kto_standin(beta: float, desirable_weight: float, undesirable_weight: float) -> SimpleNamespace:
    """What ``KTOTrainer._compute_loss`` reads: the ``kto`` loss type with the mismatched-pair KL estimate,
    reference log-probs (also of the KL pairs) precomputed in the batch; TRL's own ``_compute_kl_logps`` runs the
    stand-in LM on the mismatched pairs."""
    s = SimpleNamespace(**trainer_state(), beta=beta, loss_type="kto", calculate_KL=True,
                        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    s._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, s)
    return s


def make_unpaired(seed: int, n: int, kl_sign: float) -> tuple[Responses, Responses, torch.Tensor]:
    """n labelled responses (with extremes and, when the KL estimate clamps to 0, an exact tie rho = z0 = 0) and
    n mismatched KL responses whose mean log-ratio has sign ``kl_sign``."""
    d = make_pairs(seed, n=n)  # its first n rows: random, plus rho = +900 (row 1) and rho = -900 (row 2)
    g = torch.Generator().manual_seed(seed + 1)
    tok, mask, ref = d.tok.detach()[:n].clone(), d.mask[:n].clone(), d.ref[:n].clone()
    ref[0] = (tok * mask).sum(1)[0]                        # rho exactly 0
    labels = (torch.rand(n, generator=g) < 0.5).long()
    labels[:3] = torch.tensor([1, 0, 1])
    labels[3:5] = torch.tensor([0, 1])
    responses = Responses(tok.requires_grad_(), mask, ref)
    kl_tok = -(torch.rand(n, L, generator=g, dtype=F64) * 3 + 0.01)
    kl_mask = torch.arange(L)[None] < torch.randint(1, L + 1, (n,), generator=g)[:, None]
    kl_policy = (kl_tok * kl_mask).sum(1)
    kl_ref = kl_policy - kl_sign * (torch.rand(n, generator=g, dtype=F64) + 0.5)
    kl = Responses(kl_tok.requires_grad_(), kl_mask, kl_ref)
    return responses, kl, labels


def trl_kto(x: Responses, kl: Responses, labels: torch.Tensor, idx: torch.Tensor, **params) -> torch.Tensor:
    """TRL's KTO batch loss over examples ``idx``; the KL estimate always uses all KL rows (as one batch would)."""
    n = len(x.ref)
    table = torch.cat([x.tok, kl.tok])
    batch = sequences(idx, x.mask)
    kl_batch = sequences(torch.arange(n) + n, torch.cat([x.mask, kl.mask]))
    batch.update({"KL_input_ids": kl_batch["input_ids"], "KL_attention_mask": kl_batch["attention_mask"],
                  "KL_completion_mask": kl_batch["completion_mask"], "label": labels[idx],
                  "ref_logps": x.ref[idx], "ref_KL_logps": kl.ref})
    return KTOTrainer._compute_loss(kto_standin(**params), TableLM(table), batch, return_outputs=False)


@pytest.mark.parametrize("kl_sign", [1.0, -1.0], ids=["kl>0", "kl-clamped"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_kto_matches_trl(beta, weights, kl_sign):
    params = dict(beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1])
    x, kl, labels = make_unpaired(seed=20, n=10, kl_sign=kl_sign)
    n = len(x.ref)
    policy, ref = x.logps("sum")
    kl_policy, kl_ref = kl.logps("sum")
    out = get_loss("kto")(UnpairedInputs(policy, labels, ref, kl_policy=kl_policy, kl_reference=kl_ref), **params)

    z0 = (kl_policy - kl_ref).mean().clamp(min=0).detach()
    assert_close(out.metrics["kl"][0], z0, "KL reference point")
    assert (z0 > 0) == (kl_sign > 0)

    theirs = torch.stack([trl_kto(x, kl, labels, torch.tensor([i]), **params) for i in range(n)])
    assert_close(out.losses, theirs, "kto per-example losses")
    # same losses grouped as TRL concatenates them: [desirable..., undesirable...]
    order = torch.cat([torch.nonzero(labels == 1).view(-1), torch.nonzero(labels == 0).view(-1)])
    assert_close(out.losses[order], theirs[order], "kto losses in TRL's order")

    trl_mean = trl_kto(x, kl, labels, torch.arange(n), **params)
    assert_close(out.losses.mean(), trl_mean, "kto batch mean")
    g_mine, g_trl = grads(out.losses.mean(), [x.tok, kl.tok]), grads(trl_mean, [x.tok, kl.tok])
    assert_close(g_mine[0], g_trl[0], "kto gradient w.r.t. policy log-probs")
    assert not g_mine[1].any() and not g_trl[1].any()  # the reference point is detached on both sides


# --------------------------------------------------------------------------------------------------------------
# CPO and SimPO
# --------------------------------------------------------------------------------------------------------------


def cpo_standin(loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                cpo_alpha: float = 0.0) -> SimpleNamespace:
    """What ``CPOTrainer.cpo_loss`` (and, for the SFT term, ``concatenated_forward`` / ``get_batch_loss_metrics``)
    read: ``alpha = 0`` turns AlphaPO's reward transform off; decoder-only model, no MoE auxiliary loss."""
    s = SimpleNamespace(alpha=0.0, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                        simpo_gamma=simpo_gamma, cpo_alpha=cpo_alpha, accelerator=ACCELERATOR,
                        is_encoder_decoder=False, pad_token_id=0, aux_loss_enabled=False,
                        concatenated_inputs=CPOTrainer.concatenated_inputs, get_batch_logps=CPOTrainer.get_batch_logps)
    s.cpo_loss = types.MethodType(CPOTrainer.cpo_loss, s)
    s.concatenated_forward = types.MethodType(CPOTrainer.concatenated_forward, s)
    return s


def trl_cpo_loss(x: PairInputs, **standin) -> torch.Tensor:
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(cpo_standin(**standin), x.policy_chosen,
                                                                   x.policy_rejected)
    return losses


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_cpo_preference_term_matches_trl(beta):
    d = make_pairs(seed=30)
    x = pair_inputs(d, get_loss("cpo").reduction)
    x.chosen_nll = torch.zeros_like(x.policy_chosen)
    mine = get_loss("cpo")(x, beta=beta, alpha=0.0).losses
    theirs = trl_cpo_loss(x, loss_type="sigmoid", beta=beta)
    assert_close(mine, theirs, "cpo (alpha = 0) vs TRL cpo_loss sigmoid")
    assert_close(grads(mine.sum(), [d.tok])[0], grads(theirs.sum(), [d.tok])[0], "cpo gradient")


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (2.5, 1.4), (0.5, 0.3)])
def test_simpo_matches_trl(beta, gamma):
    d = make_pairs(seed=31)
    spec = get_loss("simpo")
    assert spec.reduction == "mean"
    x = pair_inputs(d, spec.reduction)
    mine = spec(x, beta=beta, gamma=gamma).losses
    theirs = trl_cpo_loss(x, loss_type="simpo", beta=beta, simpo_gamma=gamma)
    assert_close(mine, theirs, "simpo vs TRL cpo_loss simpo (simpo_gamma = gamma)")
    assert_close(grads(mine.sum(), [d.tok])[0], grads(theirs.sum(), [d.tok])[0], "simpo gradient")


def test_cdpo_matches_trl_cpo_sigmoid_on_logratios():
    d = make_pairs(seed=32)
    x = pair_inputs(d, "sum")
    mine = get_loss("cdpo")(x, beta=0.1, label_smoothing=0.2).losses
    ratios = PairInputs(x.chosen_logratios, x.rejected_logratios)
    theirs = trl_cpo_loss(ratios, loss_type="sigmoid", beta=0.1, label_smoothing=0.2)
    assert_close(mine, theirs, "cdpo vs TRL cpo_loss sigmoid with label smoothing on log-ratios")
    assert_close(grads(mine.sum(), [d.tok])[0], grads(theirs.sum(), [d.tok])[0], "cdpo gradient")


class LogitsLM:
    """Stand-in LM for CPO's ``concatenated_forward``: ``model(input_ids, attention_mask=..., use_cache=...)``
    returns ``logits`` [B, T, V]; row r carries its index into ``table`` in ``input_ids[r, 0]``."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


def cpo_batch(seed: int, n: int, equal_chosen_lengths: bool, vocab: int = 5):
    """Token sequences [row id, response tokens..., padding] for n chosen and n rejected responses and the
    logits (the leaf) a stand-in LM returns for them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (2 * n,), generator=g)
    if equal_chosen_lengths:
        lengths[:n] = 4
    mask = torch.arange(L)[None] < lengths[:, None]
    tokens = torch.randint(0, vocab, (2 * n, L), generator=g)
    input_ids = torch.cat([torch.arange(2 * n)[:, None], torch.where(mask, tokens, 0)], 1)
    labels = torch.cat([torch.full((2 * n, 1), -100), torch.where(mask, tokens, -100)], 1)
    attention = torch.cat([torch.ones(2 * n, 1, dtype=torch.long), mask.long()], 1)
    logits = (torch.randn(2 * n, L + 1, vocab, generator=g, dtype=F64) * 2).requires_grad_()
    batch = {"chosen_input_ids": input_ids[:n], "chosen_attention_mask": attention[:n], "chosen_labels": labels[:n],
             "rejected_input_ids": input_ids[n:], "rejected_attention_mask": attention[n:],
             "rejected_labels": labels[n:]}
    token_logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, :, None]).squeeze(-1) * mask
    return batch, logits, token_logps, mask


@pytest.mark.parametrize("equal_chosen_lengths", [True, False], ids=["equal-lengths", "unequal-lengths"])
@pytest.mark.parametrize("loss", ["cpo", "simpo"])
def test_cpo_full_loss_with_sft_term(loss, equal_chosen_lengths):
    """TRL's whole CPO batch loss (logits -> log-probs -> preference term + cpo_alpha * NLL) against alignkit's
    mean loss built from the same logits."""
    n, alpha, beta = 6, 0.7, 0.5
    batch, logits, token_logps, mask = cpo_batch(40, n, equal_chosen_lengths)
    spec = get_loss(loss)
    total, lengths = token_logps.sum(1), mask.sum(1).to(F64)
    policy = total if spec.reduction == "sum" else total / lengths
    x = PairInputs(policy[:n], policy[n:], chosen_nll=-total[:n] / lengths[:n])
    if loss == "cpo":
        mine = spec(x, beta=beta, alpha=alpha).losses.mean()
        standin = cpo_standin("sigmoid", beta, cpo_alpha=alpha)
    else:  # alignkit's simpo has no SFT term; add the per-example one the way cpo does
        mine = (spec(x, beta=beta, gamma=0.8).losses + alpha * x.chosen_nll).mean()
        standin = cpo_standin("simpo", beta, simpo_gamma=0.8, cpo_alpha=alpha)
    theirs, _ = CPOTrainer.get_batch_loss_metrics(standin, LogitsLM(logits), batch)

    token_level_nll = -total[:n].sum() / lengths[:n].sum()       # TRL: one mean over all chosen tokens
    example_level_nll = x.chosen_nll.mean()                      # alignkit: mean of per-example means
    gap = alpha * (token_level_nll - example_level_nll)
    if equal_chosen_lengths:
        assert_close(mine, theirs, f"{loss} with SFT term")
        assert_close(grads(mine, [logits])[0], grads(theirs, [logits])[0], f"{loss} gradient w.r.t. logits")
    else:
        assert abs(gap.item()) > 1e-3
        assert_close(mine + gap, theirs, f"{loss}: TRL = alignkit + alpha * (token mean - example mean NLL)")
        assert_close(grads(mine + gap, [logits])[0], grads(theirs, [logits])[0], f"{loss} gradient")


# --------------------------------------------------------------------------------------------------------------
# ORPO
# --------------------------------------------------------------------------------------------------------------


class KeepFloat64(torch.Tensor):
    """A tensor whose ``.float()`` is the identity, so TRL's ``odds_ratio_loss`` (which casts to float32) runs in
    float64; every other operation is the ordinary one."""

    def float(self, *args, **kwargs):
        return self


def orpo_standin(beta: float) -> SimpleNamespace:
    """What ``ORPOTrainer.odds_ratio_loss`` reads."""
    return SimpleNamespace(beta=beta, accelerator=ACCELERATOR)


def trl_orpo(chosen: torch.Tensor, rejected: torch.Tensor, lam: float, keep_float64: bool = True):
    if keep_float64:
        chosen, rejected = chosen.as_subclass(KeepFloat64), rejected.as_subclass(KeepFloat64)
    losses, _, _, mean_ratio, mean_log_odds = ORPOTrainer.odds_ratio_loss(orpo_standin(lam), chosen, rejected)
    return losses.as_subclass(torch.Tensor), mean_log_odds.as_subclass(torch.Tensor)


def orpo_pairs(seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-mean log-probs in [-8, -1e-5], plus a tie and extremes (one side near 0, the other very low)."""
    g = torch.Generator().manual_seed(seed)
    chosen = -torch.exp(torch.empty(n, dtype=F64).uniform_(math.log(1e-5), math.log(8.0), generator=g))
    rejected = -torch.exp(torch.empty(n, dtype=F64).uniform_(math.log(1e-5), math.log(8.0), generator=g))
    rejected[0] = chosen[0]
    chosen[1], rejected[1] = -1e-5, -40.0
    chosen[2], rejected[2] = -40.0, -1e-5
    chosen[3], rejected[3] = -1e-5, -2e-5
    return chosen.requires_grad_(), rejected.requires_grad_()


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl(lam):
    chosen, rejected = orpo_pairs(50)
    spec = get_loss("orpo")
    assert spec.reduction == "mean"
    out = spec(PairInputs(chosen, rejected, chosen_nll=torch.zeros_like(chosen)), lam=lam)
    theirs, mean_log_odds = trl_orpo(chosen, rejected, lam)
    assert_close(out.losses, -theirs, "orpo (chosen_nll = 0) = -TRL odds_ratio_loss")
    assert_close(out.metrics["log_odds"].mean(), mean_log_odds.detach(), "mean log-odds")
    per_example = torch.stack([trl_orpo(chosen[i:i + 1], rejected[i:i + 1], lam)[1] for i in range(len(chosen))])
    assert_close(out.metrics["log_odds"], per_example.detach(), "per-example log-odds")
    assert out.losses[0].item() == pytest.approx(-lam * math.log(0.5), abs=1e-12)  # tie: log-odds exactly 0
    assert_close(torch.stack(grads(out.losses.sum(), [chosen, rejected])),
                 torch.stack(grads(-theirs.sum(), [chosen, rejected])), "orpo gradient")


def test_orpo_matches_trl_float32_path():
    """TRL's unmodified path computes in float32: equal to alignkit at float32 precision."""
    chosen, rejected = orpo_pairs(51)
    out = get_loss("orpo")(PairInputs(chosen, rejected, chosen_nll=torch.zeros_like(chosen)), lam=0.1)
    theirs, _ = trl_orpo(chosen, rejected, 0.1, keep_float64=False)
    assert theirs.dtype == torch.float32
    assert_close(out.losses.float(), -theirs, "orpo vs TRL float32", rtol=1e-5, atol=1e-6)


def test_orpo_at_zero_logp_alignkit_is_finite_where_trl_is_not():
    """Per-token-mean log-prob exactly 0 (every token predicted with probability 1, common in low precision):
    TRL's log(1 - exp(0)) = -inf makes its loss infinite or 0 with NaN gradients; alignkit clamps."""
    chosen = torch.tensor([0.0, -2.0], dtype=F64, requires_grad=True)
    rejected = torch.tensor([-2.0, 0.0], dtype=F64, requires_grad=True)
    out = get_loss("orpo")(PairInputs(chosen, rejected, chosen_nll=torch.zeros(2, dtype=F64)), lam=0.1)
    assert torch.isfinite(out.losses).all()
    assert all(torch.isfinite(g).all() for g in grads(out.losses.sum(), [chosen, rejected]))
    theirs, _ = trl_orpo(chosen, rejected, 0.1)
    assert not torch.isfinite(theirs).all()


def test_orpo_near_zero_logps_match_trl():
    chosen = torch.tensor([-1e-7, -1e-9, -2.0, -5e-7], dtype=F64, requires_grad=True)
    rejected = torch.tensor([-2.0, -3.0, -1e-8, -1.0], dtype=F64, requires_grad=True)
    out = get_loss("orpo")(PairInputs(chosen, rejected, chosen_nll=torch.zeros(4, dtype=F64)), lam=0.1)
    theirs, _ = trl_orpo(chosen, rejected, 0.1)
    assert torch.isfinite(theirs).all()
    assert_close(out.losses, -theirs, "orpo near 0")
    assert_close(torch.stack(grads(out.losses.sum(), [chosen, rejected])),
                 torch.stack(grads(-theirs.sum(), [chosen, rejected])), "orpo gradient near 0")
