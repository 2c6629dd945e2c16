"""Length-controlled win rate (Dubois et al. 2024): a pure length bias is removed, real quality is kept."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.stats.length_control import length_controlled_win_rates, normalized_length_difference


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def length_biased_world():
    """400 instructions with a real difficulty. The judge prefers longer answers (logit (len_m - len_b) / 8)
    and otherwise sees only quality: "long" is as good as the baseline but writes ~15 tokens more, "better"
    has the baseline's length and a real quality edge (logit +1), "same" is the baseline in disguise."""
    rng = np.random.default_rng(0)
    n = 400
    base = rng.uniform(20, 60, n)
    difficulty = rng.normal(0, 1, n)
    lengths = {"long": base + rng.normal(15, 15, n), "better": base + rng.normal(0, 4, n),
               "same": base + rng.normal(0, 4, n)}
    quality = {"long": 0.0, "better": 1.0, "same": 0.0}
    outcomes = {m: (rng.random(n) < sigmoid(quality[m] + (lengths[m] - base) / 8 + difficulty)).astype(float)
                for m in lengths}
    results = length_controlled_win_rates(outcomes, lengths, base, n_bootstrap=100, seed=0)
    return {r.model: r for r in results}


def test_pure_length_bias_is_removed(length_biased_world):
    long = length_biased_world["long"]
    assert long.raw > 0.65                       # the raw win rate rewards verbosity
    assert abs(long.lc - 0.5) < 0.06             # the LC win rate does not
    assert long.low < 0.5 < long.high
    assert long.length_coef > 1.0                # the GLM attributes the preference to length


def test_real_quality_survives_length_control(length_biased_world):
    better, same = length_biased_world["better"], length_biased_world["same"]
    assert better.low > 0.6 and abs(better.lc - better.raw) < 0.05
    assert abs(same.lc - 0.5) < 0.07 and same.low < 0.5 < same.high


def test_identical_model_and_invalid_outcomes():
    lengths = np.array([10.0, 20.0, 30.0, 40.0])
    same = length_controlled_win_rates({"self": np.full(4, 0.5)}, {"self": lengths}, lengths, n_bootstrap=20)[0]
    assert same.lc == pytest.approx(0.5) and same.raw == 0.5
    assert np.all(normalized_length_difference(lengths, lengths) == 0.0)
    partial = length_controlled_win_rates({"m": np.array([1.0, np.nan, 0.0, 1.0])}, {"m": lengths + 5}, lengths,
                                          n_bootstrap=10)[0]
    assert partial.n == 3 and partial.raw == pytest.approx(2 / 3)


def test_bootstrap_is_seeded(length_biased_world):
    rng = np.random.default_rng(1)
    outcomes = {"m": (rng.random(50) < 0.6).astype(float)}
    lengths, base = {"m": rng.uniform(5, 30, 50)}, rng.uniform(5, 30, 50)
    a = length_controlled_win_rates(outcomes, lengths, base, n_bootstrap=30, seed=4)[0]
    b = length_controlled_win_rates(outcomes, lengths, base, n_bootstrap=30, seed=4)[0]
    assert a.as_dict() == b.as_dict()


def test_soft_outcomes_are_accepted_and_out_of_range_ones_refused():
    lengths = np.array([10.0, 20.0, 30.0, 40.0, 25.0, 15.0])
    soft = np.array([0.9, 0.7, 0.2, 0.6, 0.8, 0.4])
    result = length_controlled_win_rates({"m": soft}, {"m": lengths}, lengths, n_bootstrap=5)[0]
    assert result.raw == pytest.approx(soft.mean()) and result.lc == pytest.approx(soft.mean(), abs=0.02)
    with pytest.raises(ValueError, match="convert with outcomes_from_alpacaeval"):
        length_controlled_win_rates({"m": soft + 1}, {"m": lengths}, lengths, n_bootstrap=5)


def test_missing_lengths_are_refused_not_ignored(length_biased_world):
    """A NaN length used to make the length spread NaN: the length term vanished and LC equalled raw."""
    lengths = np.arange(10.0, 70.0, 10.0)
    outcomes = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    model = lengths + 5
    model[[1, 4]] = np.nan
    base = lengths.copy()
    base[2] = np.nan
    with pytest.raises(ValueError, match=r"^length control needs every answer's length; 3 missing \(model 'm' at "
                                         r"instructions 1, 4; the baseline at instruction 2\)$"):
        length_controlled_win_rates({"m": outcomes}, {"m": model}, base, n_bootstrap=5)
