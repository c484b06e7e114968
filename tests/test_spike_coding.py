"""Spike coding (rate, latency) and LIF dynamics against closed forms and snntorch stepping."""
import pytest
import snntorch as snn
import torch
from snntorch import spikegen

from encoders import EncoderConfig, SpikeCoder
from encoders.spiking import LeakyIntegrate, SpikingLayer


def intensities(B=2, L=3, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, L, N, generator=g)


def test_windows_follow_prompt_order_and_padding_fires_nothing():
    p = torch.ones(2, 3, 4)  # p = 1: every channel fires at every step of its window (rate)
    weights = torch.tensor([[1.0, 2.0, 0.5], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    coder = SpikeCoder(coding="rate", steps_per_token=2).eval()
    s = coder(p, weights, mask)
    assert s.shape == (6, 2, 4)  # [T = L*K, B, N]
    assert s[:, 0, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 0.5, 0.5]  # heights = weights, window by window
    assert s[:2, 1].eq(1).all() and s[2:, 1].eq(0).all()  # padding windows are silent


def test_rate_coding_is_bernoulli_with_seeded_generator():
    p = torch.full((4, 8, 64), 0.3)
    w, m = torch.ones(4, 8), torch.ones(4, 8, dtype=torch.bool)
    coder = SpikeCoder(coding="rate", steps_per_token=16).train()
    a = coder(p, w, m, torch.Generator().manual_seed(1))
    b = coder(p, w, m, torch.Generator().manual_seed(1))
    c = coder(p, w, m, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(a.mean().item() - 0.3) < 0.02  # 32768 draws
    assert coder(torch.zeros_like(p), w, m).eq(0).all()


def test_eval_rate_noise_is_frozen_and_shared_by_positions():
    coder = SpikeCoder(coding="rate", steps_per_token=4, seed=3).eval()
    p = intensities(1, 1, 8).expand(1, 3, 8).contiguous()  # the same token three times
    s = coder(p, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    w0, w1, w2 = s[:4], s[4:8], s[8:]
    assert torch.equal(w0, w1) and torch.equal(w1, w2)  # a token's window depends on the token only
    assert torch.equal(s, coder(p, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool)))


def test_frozen_rate_noise_trains_on_eval_codes_with_gradients():
    p = intensities(2, 3, 8).requires_grad_(True)
    w, m = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    frozen = SpikeCoder(coding="rate", steps_per_token=4, seed=3, rate_noise="frozen").train()
    a, b = frozen(p, w, m), frozen(p, w, m)
    assert torch.equal(a, b)  # deterministic in training
    assert torch.equal(a, frozen.eval()(p, w, m))  # and the codes eval gives
    fresh = SpikeCoder(coding="rate", steps_per_token=4, seed=3).train()
    assert not torch.equal(fresh(p, w, m), fresh(p, w, m))
    frozen.train()(p, w, m).sum().backward()
    assert p.grad.abs().sum() > 0  # straight-through gradients still reach the intensities


def test_bad_rate_noise_is_refused():
    with pytest.raises(ValueError, match="rate_noise"):
        SpikeCoder(coding="rate", steps_per_token=4, rate_noise="sometimes")
    with pytest.raises(ValueError, match="EncoderConfig.rate_noise"):
        EncoderConfig(rate_noise="sometimes")


def test_latency_matches_snntorch_spikegen_and_larger_fires_earlier():
    K = 6
    p = torch.tensor([[[0.0, 0.2, 0.5, 0.9, 1.0]]])  # [1, 1, 5]
    coder = SpikeCoder(coding="latency", steps_per_token=K)
    s = coder(p, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))[:, 0]  # [K, 5]
    ref = spikegen.latency(p[0, 0], num_steps=K, normalize=True, linear=True, clip=True, threshold=0.01)
    assert torch.equal(s, ref)
    first = [int(torch.nonzero(s[:, i])[0]) for i in range(1, 5)]
    assert first == sorted(first, reverse=True) and first[-1] == 0  # larger p -> earlier spike
    assert s[:, 0].eq(0).all()  # below snntorch's threshold: no spike
    assert s[:, 1:].sum(0).tolist() == [1.0] * 4  # one spike per channel per window


def test_gradients_reach_intensities():
    w = torch.tensor([[1.0, 3.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    p = torch.full((1, 2, 3), 0.5, requires_grad=True)
    SpikeCoder(coding="rate", steps_per_token=4).train()(p, w, m).sum().backward()
    # Straight-through: d(sum of spikes)/dp = K * weight.
    assert torch.allclose(p.grad, torch.tensor([4.0, 12.0]).view(1, 2, 1).expand(1, 2, 3))
    q = torch.rand(1, 2, 3, requires_grad=True)
    s = SpikeCoder(coding="latency", steps_per_token=4)(q, w, m)
    (s * torch.arange(8.0).view(8, 1, 1)).sum().backward()  # loss = spike times: later is larger
    assert torch.isfinite(q.grad).all() and (q.grad < 0).all()  # raising p fires earlier


def test_leaky_integrate_matches_closed_form():
    beta, thr = 0.5, 1.0
    cur = torch.tensor([0.3, 0.3, 0.3, 0.3]).view(4, 1, 1)  # sub-threshold: mem = 0.3 (1 - b^(t+1)) / (1 - b)
    mem = LeakyIntegrate.apply(cur, torch.tensor(beta), thr)
    closed = torch.tensor([0.3 * (1 - beta ** (t + 1)) / (1 - beta) for t in range(4)])
    assert torch.allclose(mem.flatten(), closed)
    # A kick over threshold: fires at t=0, the reset subtracts the threshold at t=1.
    cur = torch.tensor([1.5, 0.0, 0.0, 0.9]).view(4, 1, 1)
    mem = LeakyIntegrate.apply(cur, torch.tensor(beta), thr).flatten()
    assert torch.allclose(mem, torch.tensor([1.5, 0.75 - 1.0, -0.125, -0.0625 + 0.9]))


def test_leaky_layer_matches_stepping_snntorch_values_and_gradients():
    torch.manual_seed(0)
    layer = SpikingLayer(in_features=6, out_features=5, neuron="leaky", beta=0.8, learn_beta=True)
    x = (torch.rand(12, 3, 6) < 0.5).float() * 2
    out = {}
    for stepwise in (False, True):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        spk, mem = layer(xi, stepwise=stepwise)
        ((spk * torch.linspace(0, 1, 5)).sum() + mem.square().sum()).backward()
        out[stepwise] = (spk, mem, xi.grad, layer.fc.weight.grad.clone(), layer.cell.beta.grad.clone())
    assert out[False][0].sum() > 0  # some spikes, so resets are exercised
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.equal(out[False][1], out[True][1])  # membranes bit-equal


def test_snntorch_leaky_state_is_local():
    layer = SpikingLayer(in_features=4, out_features=3, neuron="leaky")
    x = torch.ones(5, 2, 4)
    a = layer(x, stepwise=True)
    assert layer.cell.mem.numel() == 0  # no state (or graph) kept between calls
    b = layer(x, stepwise=True)
    assert torch.equal(a[1], b[1])


def test_rleaky_matches_closed_form_with_recurrence():
    layer = SpikingLayer(in_features=1, out_features=1, neuron="rleaky", beta=0.5)
    with torch.no_grad():
        layer.fc.weight.fill_(1.0)
        layer.fc.bias.zero_()
        layer.cell.recurrent.weight.fill_(0.25)
        layer.cell.recurrent.bias.zero_()
    x = torch.tensor([1.5, 0.0, 0.0]).view(3, 1, 1)
    spk, mem = layer(x)
    # t0: 1.5 fires; t1: 0.5*1.5 + 0 + 0.25*1 - 1 = 0; t2: 0 + 0 + 0.25*0 - 0 = 0
    assert spk.flatten().tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(mem.flatten(), torch.tensor([1.5, 0.0, 0.0]))
    assert isinstance(layer.cell, snn.RLeaky)


def test_rleaky_layer_matches_stepping_snntorch_values_and_gradients():
    torch.manual_seed(1)
    layer = SpikingLayer(in_features=6, out_features=5, neuron="rleaky", beta=0.7, learn_beta=True)
    x = (torch.rand(10, 3, 6) < 0.5).float()
    out = {}
    for stepwise in (False, True):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        spk, mem = layer(xi, stepwise=stepwise)
        ((spk * torch.linspace(-1, 1, 5)).sum() + mem.square().sum()).backward()
        rec = layer.cell.recurrent
        out[stepwise] = (spk, mem, xi.grad, layer.fc.weight.grad.clone(), rec.weight.grad.clone(),
                         rec.bias.grad.clone(), layer.cell.beta.grad.clone())
    assert 0 < out[False][0].mean() < 1  # spikes and silences, so recurrence and resets matter
    assert torch.equal(out[False][0], out[True][0]) and torch.equal(out[False][1], out[True][1])  # bit-equal
    for a, b in zip(out[False][2:], out[True][2:]):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
