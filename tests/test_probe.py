"""Tests for the linear probes of mbrl.eval_world_model: closed-form fits and the floor on feature scales."""

from __future__ import annotations

import torch

from mbrl.eval_world_model import STD_FLOOR, apply_probe, fit_probe


def test_a_probe_recovers_a_linear_map_exactly_without_ridge() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64) + 3.0
    probe = fit_probe(x, y, ridge=0.0)
    assert torch.allclose(apply_probe(probe, x), y, atol=1e-9)


def test_a_feature_that_hardly_varies_cannot_swing_the_probe() -> None:
    # feature 0 carries the target; feature 1 is nearly constant over the data (std 1e-6 of feature 0's) and
    # happens to correlate with the noise of the target. Unfloored, standardisation would blow it up a million-fold
    # and a 0.01 error in it (small next to feature 0's spread of 1) would move the reading by far more than 1.
    gen = torch.Generator().manual_seed(1)
    signal = torch.randn(2000, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(2000, 1, generator=gen, dtype=torch.float64)
    x = torch.cat([signal, 1e-6 * noise], dim=1)
    y = signal + 0.1 * noise
    probe = fit_probe(x, y)
    _, scale, _ = probe
    assert scale[1] >= STD_FLOOR * x.std(0).mean()  # floored
    shifted = x + torch.tensor([0.0, 0.01], dtype=torch.float64)
    assert (apply_probe(probe, shifted) - apply_probe(probe, x)).abs().max() < 0.05
