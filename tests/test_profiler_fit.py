"""Cost-model fitting: recovers known coefficients, judges itself on held-out points only."""
import numpy as np
import pytest

from pie_core.errors import RuntimeFailure
from profiler.fit import fit_decode, fit_prefill, holdout_mask
from profiler.hardware_profile import LayerTiming

BATCHES = (1, 4, 16, 64)
CONTEXTS = (64, 256, 1024)


def decode_grid(fixed, per_token, per_kv, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    timings = []
    for context in CONTEXTS:
        for batch in BATCHES:
            true = fixed + per_token * batch + per_kv * batch * context
            measured = true * (1 + noise * rng.standard_normal())
            timings.append(LayerTiming("decode", batch, context, measured, measured * 0.95, measured * 1.05))
    return timings


def fit(timings):
    return fit_decode(timings, layer_weight_bytes=100, layer_flops_per_token=200, kv_bytes_per_token_layer=300)


def test_exact_data_recovers_coefficients():
    decode, result = fit(decode_grid(1.5e-3, 2e-5, 7e-7))
    assert decode.fixed_s == pytest.approx(1.5e-3, rel=1e-6)
    assert decode.per_token_s == pytest.approx(2e-5, rel=1e-6)
    assert decode.per_kv_token_s == pytest.approx(7e-7, rel=1e-6)
    assert decode.median_rel_error < 1e-9 and decode.max_rel_error < 1e-9
    assert (decode.num_fit_points, decode.num_holdout_points) == (8, 4)
    assert decode.layer_weight_bytes == 100 and decode.kv_bytes_per_token_layer == 300
    assert decode.predict_s(16, 256) == pytest.approx(1.5e-3 + 16 * 2e-5 + 16 * 256 * 7e-7)


def test_noisy_data_reports_heldout_error_not_training_error():
    timings = decode_grid(1.5e-3, 2e-5, 7e-7, noise=0.05, seed=0)
    decode, result = fit(timings)
    held = [t for t, m in zip(timings, holdout_mask(timings)) if m]
    expected = [abs(decode.predict_s(t.batch_size, t.context_len) - t.median_s) / t.median_s for t in held]
    assert result.holdout_errors == pytest.approx(expected)
    assert decode.median_rel_error == pytest.approx(float(np.median(expected)))
    assert decode.max_rel_error == pytest.approx(max(expected))
    assert 0 < decode.median_rel_error <= 0.10  # 5% noise on every point, held-out ones included


def test_a_wrong_model_shows_up_as_heldout_error():
    # Quadratic in context: the linear model cannot follow, and held-out points say so.
    timings = [LayerTiming("decode", t.batch_size, t.context_len, 1e-3 + 1e-9 * t.batch_size * t.context_len**2, 0, 0)
               for t in decode_grid(0, 0, 0)]
    decode, _ = fit(timings)
    assert decode.max_rel_error > 0.2


def test_coefficients_are_never_negative():
    # Time falls with batch: least squares would give a negative per-token cost; NNLS clamps it at zero.
    timings = [LayerTiming("decode", b, c, 0.01 / b + 1e-8 * b * c, 0, 0) for c in CONTEXTS for b in BATCHES]
    decode, _ = fit(timings)
    assert min(decode.fixed_s, decode.per_token_s, decode.per_kv_token_s) >= 0


def test_holdout_mask_spreads_over_the_grid_and_keeps_corners():
    timings = decode_grid(1, 1, 1)
    mask = holdout_mask(timings)
    held = {(t.batch_size, t.context_len) for t, m in zip(timings, mask) if m}
    assert held == {(4, 64), (16, 256), (1, 1024), (64, 1024)}
    assert (1, 64) not in held and (64, 64) not in held


def test_too_few_points_is_a_runtime_failure():
    with pytest.raises(RuntimeFailure, match="at least 3 training"):
        fit(decode_grid(1e-3, 1e-5, 1e-7)[:2])


def test_prefill_fit_recovers_quadratic_term():
    timings = [LayerTiming("prefill", b, n, 2e-3 + 1e-5 * b * n + 3e-8 * b * n * n, 0, 0)
               for n in (16, 64, 256) for b in (1, 4)]
    prefill, result = fit_prefill(timings)
    assert prefill.per_token_sq_s == pytest.approx(3e-8, rel=1e-6)
    assert prefill.predict_s(4 * 64, 4 * 64**2) == pytest.approx(2e-3 + 1e-5 * 256 + 3e-8 * 4 * 64**2)
    assert result.num_holdout_points >= 1
