"""Length-controlled win rates (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
Automatic Evaluators", the metric of AlpacaEval 2.0).

Judges prefer longer answers. The LC win rate answers "what would the win rate be if the model's and the
baseline's answers had the same length?" by fitting a GLM to the judge's preferences and predicting with the
length term set to zero. For model m against baseline b on instruction x:

    q(m > b | x) = sigmoid( theta_m  +  phi_m * tanh(delta_mx / sd_m)  +  psi_m * gamma_x )

* ``theta_m``: model identity (the length-free quality gap to the baseline);
* ``delta_mx = len(y_m(x)) - len(y_b(x))``, ``sd_m`` its standard deviation over instructions (not centred, so
  0 still means equal length), squashed by tanh so that very long answers cannot dominate;
* ``gamma_x``: instruction difficulty, shared by all models, and ``psi_m`` its weight for model m.

The LC win rate is ``mean_x sigmoid(theta_m + psi_m * gamma_x)``: the fitted preference with ``phi_m`` zeroed.

Fit, in two stages (AlpacaEval estimates ``gamma_x`` once over many models and then fits every model alone):

1. difficulty: the joint GLM ``sigmoid(theta_k + phi_k tanh(delta_kx / sd_k) + gamma_x)`` over the comparisons
   of every *other* model k != m, with a ridge ``lambda_gamma / 2 * |gamma|^2`` (few models see each
   instruction), by Newton's method using the Schur complement of the diagonal ``gamma`` block (cost linear in
   the number of prompts). Leaving model m out matters with few models: a difficulty fitted on m's own
   outcomes absorbs m's length advantage, which the LC prediction would then keep (AlpacaEval fits it on a
   leaderboard of over a hundred models, where one model's share is negligible). With a single model
   ``gamma = 0`` and the GLM reduces to AlpacaEval's ``length_controlled_minimal`` (identity + length).
2. per model: logistic regression of m's outcomes on ``[1, tanh(delta / sd), gamma_x]`` (weak ridge), giving
   ``theta_m, phi_m, psi_m``.

Outcomes are probabilities in [0, 1] (1 / 0.5 / 0 for win / tie / loss, soft preferences in between: the
convention of :mod:`alignkit.stats.intervals`; others are refused); NaN (invalid) comparisons are left out. Every
answer needs a length: a missing (NaN) one is refused, since it would silently turn length control off. Intervals: a
seeded percentile bootstrap over instructions, refitting both stages. Not included: AlpacaEval's extra
regularisation of ``theta_m`` towards the baseline (``regularize_to_baseline_lambda``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from alignkit.stats.intervals import check_outcomes


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def normalized_length_difference(model_lengths: np.ndarray, baseline_lengths: np.ndarray) -> np.ndarray:
    """``tanh(delta / sd(delta))`` with ``delta = len_m - len_b`` (Dubois et al. 2024); 0 when all lengths tie."""
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    sd = float(delta.std())
    return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


def check_lengths(lengths: dict[str, Any]) -> None:
    """Refuse missing answer lengths (NaN, infinite) in one line naming how many and where: a NaN length makes the
    length spread NaN, which turned the length term off and reported LC = raw."""
    missing = {who: np.flatnonzero(~np.isfinite(np.asarray(values, dtype=float))) for who, values in lengths.items()}
    missing = {who: idx for who, idx in missing.items() if idx.size}
    if missing:
        total = sum(idx.size for idx in missing.values())
        where = "; ".join(f"{who} at instruction{'s' if idx.size > 1 else ''} "
                          f"{', '.join(map(str, idx[:5]))}{', ...' if idx.size > 5 else ''}"
                          for who, idx in missing.items())
        raise ValueError(f"length control needs every answer's length; {total} missing ({where})")


def fit_logistic(features: np.ndarray, targets: np.ndarray, l2: float = 1e-3, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Weights ``w`` maximising ``sum_i t_i log sigmoid(f_i w) + (1 - t_i) log sigmoid(-f_i w) - l2/2 |w|^2``
    (logistic regression with soft targets ``t`` in [0, 1]), by Newton's method."""
    w = np.zeros(features.shape[1])
    for _ in range(max_iter):
        p = _sigmoid(features @ w)
        grad = features.T @ (targets - p) - l2 * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, grad)
        w += step
        if np.max(np.abs(step)) < tol:
            break
    return w


def instruction_difficulty(model_index: np.ndarray, prompt_index: np.ndarray, length_term: np.ndarray,
                           targets: np.ndarray, n_models: int, n_prompts: int, l2_difficulty: float = 1.0,
                           l2: float = 1e-3, max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """``gamma_x`` of the joint GLM ``sigmoid(theta_m + phi_m tanh(delta_mx / sd_m) + gamma_x)`` (Dubois et al.
    2024, stage 1 here), ridge ``l2_difficulty / 2 |gamma|^2`` and ``l2 / 2 |(theta, phi)|^2``.

    Newton's method: the Hessian's ``gamma`` block is diagonal, so each step solves the small ``(theta, phi)``
    system on the Schur complement ``S = H_uu - H_ug D^-1 H_gu`` and back-substitutes ``gamma``.
    """
    rows = np.arange(len(targets))
    design = np.zeros((len(targets), 2 * n_models))          # per-model intercept and length slope
    design[rows, 2 * model_index] = 1.0
    design[rows, 2 * model_index + 1] = length_term
    u, gamma = np.zeros(2 * n_models), np.zeros(n_prompts)
    for _ in range(max_iter):
        p = _sigmoid(design @ u + gamma[prompt_index])
        residual, weight = targets - p, p * (1 - p)
        g_u = design.T @ residual - l2 * u
        g_g = np.bincount(prompt_index, residual, n_prompts) - l2_difficulty * gamma
        h_uu = (design * weight[:, None]).T @ design + l2 * np.eye(len(u))
        h_ug = np.zeros((len(u), n_prompts))
        np.add.at(h_ug.T, prompt_index, design * weight[:, None])
        d = np.bincount(prompt_index, weight, n_prompts) + l2_difficulty
        schur = h_uu - (h_ug / d) @ h_ug.T
        step_u = np.linalg.solve(schur, g_u - h_ug @ (g_g / d))
        step_g = (g_g - h_ug.T @ step_u) / d
        u, gamma = u + step_u, gamma + step_g
        if max(np.max(np.abs(step_u)), np.max(np.abs(step_g))) < tol:
            break
    return gamma


@dataclass
class LengthControlled:
    """One model's raw and length-controlled win rate against the baseline, with the GLM's coefficients."""

    model: str
    raw: float
    lc: float
    low: float
    high: float
    n: int
    theta: float
    length_coef: float
    difficulty_coef: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _difficulty_without(m: int, outcomes: np.ndarray, length_terms: np.ndarray, valid: np.ndarray,
                        l2_difficulty: float) -> np.ndarray:
    """``gamma_x`` fitted on every model but ``m`` (zeros when m is the only model)."""
    others = np.arange(len(outcomes)) != m
    if not others.any():
        return np.zeros(outcomes.shape[1])
    model_index, prompt_index = np.nonzero(valid[others])
    sub_outcomes, sub_lengths = outcomes[others], length_terms[others]
    return instruction_difficulty(model_index, prompt_index, sub_lengths[valid[others]],
                                  sub_outcomes[valid[others]], int(others.sum()), outcomes.shape[1],
                                  l2_difficulty=l2_difficulty)


def _fit_all(outcomes: np.ndarray, length_terms: np.ndarray, l2_difficulty: float) -> list[tuple[float, ...]]:
    """(lc, theta, phi, psi) per model from ``[models, prompts]`` outcomes (NaN: invalid) and length terms."""
    valid = ~np.isnan(outcomes)
    fits = []
    for m in range(len(outcomes)):
        keep = valid[m]
        if not keep.any():
            fits.append((np.nan,) * 4)
            continue
        gamma = _difficulty_without(m, outcomes, length_terms, valid, l2_difficulty)[keep]
        features = np.column_stack([np.ones(keep.sum()), length_terms[m, keep], gamma])
        theta, phi, psi = fit_logistic(features, outcomes[m, keep])
        fits.append((float(_sigmoid(theta + psi * gamma).mean()), float(theta), float(phi), float(psi)))
    return fits


def length_controlled_win_rates(outcomes: dict[str, np.ndarray], model_lengths: dict[str, np.ndarray],
                                baseline_lengths: np.ndarray, *, n_bootstrap: int = 200, confidence: float = 0.95,
                                seed: int = 0, l2_difficulty: float = 1.0) -> list[LengthControlled]:
    """LC win rates (Dubois et al. 2024) of every model against one baseline on the same instructions.

    ``outcomes[m][x]`` is model m's outcome against the baseline on instruction x (1 / 0.5 / 0, NaN invalid),
    ``model_lengths[m][x]`` and ``baseline_lengths[x]`` the answer lengths. Returns, per model, the raw win rate,
    ``lc = mean_x sigmoid(theta_m + psi_m gamma_x)`` with a seeded bootstrap interval over instructions, and the
    GLM coefficients (``length_coef`` = ``phi_m``: how much the judge rewards length).
    """
    names = list(outcomes)
    if not names:
        return []
    check_lengths({**{f"model '{m}'": model_lengths[m] for m in names}, "the baseline": baseline_lengths})
    matrix = np.array([np.asarray(outcomes[m], dtype=float) for m in names])
    check_outcomes(np.nan_to_num(matrix, nan=0.5), "outcomes")
    lengths = np.array([normalized_length_difference(model_lengths[m], baseline_lengths) for m in names])
    if matrix.shape != lengths.shape:
        raise ValueError(f"outcomes {matrix.shape} and lengths {lengths.shape} differ in shape")
    fits = _fit_all(matrix, lengths, l2_difficulty)
    rng = np.random.default_rng(seed)
    n_prompts = matrix.shape[1]
    boot = []
    for _ in range(n_bootstrap):
        rows = rng.integers(0, n_prompts, n_prompts)
        boot.append([f[0] for f in _fit_all(matrix[:, rows], lengths[:, rows], l2_difficulty)])
    alpha = 1.0 - confidence
    bounds = (np.quantile(np.array(boot), [alpha / 2, 1 - alpha / 2], axis=0) if n_bootstrap
              else np.full((2, len(names)), np.nan))
    valid = ~np.isnan(matrix)
    raw = [float(matrix[i, valid[i]].mean()) if valid[i].any() else float("nan") for i in range(len(names))]
    return [LengthControlled(m, raw=raw[i], lc=fits[i][0], low=float(bounds[0, i]),
                             high=float(bounds[1, i]), n=int(valid[i].sum()), theta=fits[i][1],
                             length_coef=fits[i][2], difficulty_coef=fits[i][3]) for i, m in enumerate(names)]


def lc_table(results: Sequence[LengthControlled]) -> list[dict[str, Any]]:
    """Rows for a report table."""
    return [{"model": r.model, "raw win rate": r.raw, "LC win rate": r.lc, "LC 95% low": r.low,
             "LC 95% high": r.high, "length coef": r.length_coef, "n": r.n} for r in results]
