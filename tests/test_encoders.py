"""The three spiking encoders: one interface, and the behaviours that would catch a fake."""
import copy

import pytest
import torch

from encoders import EncoderConfig, SpikeCode, TokenBatch, build_encoder, make_tokenizer, plot_spikes
from encoders.minilm import FEATURE_DIM

CAPTIONS = ["a red circle left of a blue square", "a big green triangle above a small yellow star",
            "two purple hexagons", "an orange square right of a red triangle"]
SMALL = dict(code_dim=32, embed_dim=16, hidden=24, steps_per_token=3)
KINDS = ["embedding", "recurrent", "transformer"]


def setup(kind="embedding", **kw):
    torch.manual_seed(0)
    cfg = EncoderConfig(kind=kind, **{**SMALL, **kw})
    tok = make_tokenizer(cfg, CAPTIONS)
    return cfg, tok, build_encoder(cfg, len(tok)).eval()


def distance(a: SpikeCode, b: SpikeCode, row=0) -> float:
    return (a.pooled[row] - b.pooled[row]).norm().item() / a.pooled[row].norm().item()


@pytest.mark.filterwarnings("ignore:prompt cut")
@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_64_prompts_of_length_16_forward_backward(kind):
    cfg, tok, enc = setup(kind, max_length=16)
    enc.train()
    words = " ".join(CAPTIONS).split()
    prompts = [" ".join(words[i % 5: i % 5 + 16]) for i in range(64)]
    batch = tok(prompts)
    assert batch.ids.shape == (64, 16)
    code = enc(batch)
    assert code.pooled.shape == (64, cfg.code_dim) and code.tokens.shape == (64, 16, cfg.code_dim)
    assert torch.equal(code.mask, batch.mask)
    assert code.stats["spikes"].shape == (64,) and code.stats["synops"].shape == (64,)
    assert code.stats["firing_rate"].shape == () and code.stats["dense_macs"].shape == ()
    assert 0 < code.stats["firing_rate"] < 1 and (code.stats["spikes"] > 0).all()
    (code.pooled.square().mean() + code.tokens.square().mean()).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("coding", ["rate", "latency"])
def test_swapping_words_moves_spikes_in_time_and_changes_the_code(coding):
    cfg, tok, enc = setup(coding=coding)
    K = cfg.steps_per_token
    batch = tok(["a red circle", "a circle red"])
    code, trains = enc.run(batch)
    s = trains["input"]  # [T, B, N]
    a, b = s[:, 0], s[:, 1]
    assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)  # same multiset of spikes
    assert torch.equal(a[K:2 * K], b[2 * K:3 * K]) and torch.equal(a[2 * K:3 * K], b[K:2 * K])  # moved in time
    assert not torch.equal(a, b)
    assert distance(code.index([0]), code.index([1])) > 1e-3


def test_doubling_a_weight_doubles_spike_heights_and_changes_the_code():
    cfg, tok, enc = setup(coding="latency")
    K = cfg.steps_per_token
    batch = tok(["a red circle", "a (red:2) circle", "(a:1) (red:1) (circle:1)"])
    code, trains = enc.run(batch)
    s = trains["input"]
    assert torch.equal(s[K:2 * K, 1], 2 * s[K:2 * K, 0]) and s[K:2 * K, 0].sum() > 0
    assert torch.equal(s[:K, 1], s[:K, 0]) and torch.equal(s[2 * K:, 1], s[2 * K:, 0])
    assert distance(code.index([0]), code.index([1])) > 1e-3
    # Weight 1 everywhere is no emphasis at all.
    assert torch.allclose(code.pooled[0], code.pooled[2], atol=1e-6)
    assert torch.allclose(code.tokens[0], code.tokens[2], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("coding", ["rate", "latency"])
def test_padding_changes_nothing(kind, coding):
    cfg, tok, enc = setup(kind, coding=coding)
    alone = enc(tok(["a red circle"]))
    padded = enc(tok(["a red circle", "a big green triangle above a small yellow star"]))
    L = alone.tokens.shape[1]
    assert torch.allclose(alone.pooled[0], padded.pooled[0], atol=1e-5)
    assert torch.allclose(alone.tokens[0], padded.tokens[0, :L], atol=1e-5)
    assert padded.tokens[0, L:].eq(0).all() and not padded.mask[0, L:].any()
    for key in ("spikes", "synops"):
        assert alone.stats[key][0] == padded.stats[key][0]


@pytest.mark.parametrize("kind", ["embedding", "recurrent"])
@pytest.mark.parametrize("coding", ["rate", "latency"])
def test_gradients_reach_embeddings_through_the_lif_neurons(kind, coding):
    cfg, tok, enc = setup(kind, coding=coding)
    enc.train()
    batch = tok(["a red circle left of a blue square"])
    used = batch.ids[0].unique()
    for part in ("pooled", "tokens"):
        enc.zero_grad()
        code = enc(batch, generator=torch.Generator().manual_seed(0))
        getattr(code, part).square().sum().backward()
        g = enc.embed.weight.grad
        assert torch.isfinite(g).all()
        assert (g[used].abs().sum(1) > 0).all(), part  # every word of the prompt gets a gradient
        assert g[~torch.isin(torch.arange(len(g)), used)].eq(0).all()


def test_same_seed_same_code():
    cfg, tok, enc = setup()
    batch = tok(CAPTIONS)
    a, b = enc(batch), enc(batch)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)  # eval: deterministic
    other = build_encoder(EncoderConfig(**{**cfg.to_dict(), "seed": 1}), len(tok)).eval()
    other.load_state_dict(enc.state_dict())
    assert not torch.equal(other(batch).pooled, a.pooled)  # the seed is what fixes the noise
    enc.train()
    c = enc(batch, generator=torch.Generator().manual_seed(5))
    d = enc(batch, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    e = enc(batch)
    torch.manual_seed(7)
    f = enc(batch)
    assert torch.equal(c.pooled, d.pooled) and torch.equal(e.pooled, f.pooled)
    assert not torch.equal(c.pooled, e.pooled)


def test_eval_code_of_a_prompt_does_not_depend_on_its_batch():
    cfg, tok, enc = setup()
    a = enc(tok(["a red circle", "two purple hexagons"]))
    b = enc(tok(["an orange square", "a red circle"]))
    assert torch.allclose(a.pooled[0], b.pooled[1], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_codes_differ_clearly_between_prompts(kind):
    cfg, tok, enc = setup(kind)
    code = enc(tok(["a red circle left of a blue square", "a blue circle left of a red square",
                    "two purple hexagons", ""]))
    pooled = torch.nn.functional.normalize(code.pooled, dim=1)
    cos = pooled @ pooled.T
    off = cos[~torch.eye(4, dtype=torch.bool)]
    assert off.max() < 0.995, cos  # colour/shape binding and word choice both show


@pytest.mark.parametrize("kind", ["embedding", "recurrent"])
def test_fast_path_equals_stepping_snntorch(kind):
    cfg, tok, enc = setup(kind, coding="latency")
    batch = tok(CAPTIONS)
    (fast, tf), (slow, ts) = enc.run(batch), enc.run(batch, stepwise=True)
    assert all(torch.equal(tf[k], ts[k]) for k in tf)  # the same spikes, step by step
    assert torch.allclose(fast.pooled, slow.pooled, atol=1e-5) and torch.equal(fast.stats["spikes"], slow.stats["spikes"])


def test_all_empty_batch_works():
    cfg, tok, enc = setup()
    code = enc(tok(["", ""]))
    assert code.tokens.shape == (2, 1, cfg.code_dim) and not code.mask.any()
    assert torch.equal(code.pooled[0], code.pooled[1]) and code.stats["spikes"].eq(0).all()


def test_stats_count_synaptic_operations():
    cfg, tok, enc = setup(num_layers=2)
    code, trains = enc.run(tok(["a red circle"]))
    n_in, n1, n2 = (int(trains[k].ne(0).sum()) for k in ("input", "layer1", "layer2"))
    H = cfg.hidden
    assert code.stats["spikes"].item() == n_in + n1 + n2
    assert code.stats["synops"].item() == n_in * H + n1 * H  # each spike x its fan-out
    T = 3 * cfg.steps_per_token
    assert code.stats["dense_macs"].item() == T * (cfg.embed_dim * H + H * H)
    assert code.stats["firing_rate"].item() == pytest.approx((n1 + n2) / (2 * H * T))


def test_resize_vocab_keeps_old_rows():
    cfg, tok, enc = setup()
    before = enc(tok(["a red circle"])).pooled
    old = enc.embed.weight.detach().clone()
    tok.extend(["a pink star"])
    with pytest.raises(ValueError, match="resize_vocab"):
        enc(tok(["a pink star"]))
    enc.resize_vocab(len(tok))
    assert enc.embed.num_embeddings == len(tok) and torch.equal(enc.embed.weight[: len(old)], old)
    assert torch.equal(enc(tok(["a red circle"])).pooled, before)
    enc(tok(["a pink star"]))
    with pytest.raises(ValueError):
        enc.resize_vocab(3)


def test_state_dict_roundtrip_strict_and_deepcopy_after_forward():
    cfg, tok, enc = setup("recurrent", recurrent_cell="slstm")
    enc.train()
    enc(tok(CAPTIONS)).pooled.sum().backward()  # leaves no graph behind in snntorch modules
    ema = copy.deepcopy(enc).eval()
    again = build_encoder(EncoderConfig.from_dict(cfg.to_dict()), len(tok)).eval()
    again.load_state_dict(ema.state_dict(), strict=True)
    enc.eval()
    assert torch.equal(again(tok(CAPTIONS)).pooled, enc(tok(CAPTIONS)).pooled)


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_roundtrip_is_strict(kind, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg, tok, enc = setup(kind)
    save_file(enc.state_dict(), tmp_path / "enc.safetensors")
    torch.manual_seed(1)
    again = build_encoder(EncoderConfig.from_dict(cfg.to_dict()), len(tok)).eval()
    again.load_state_dict(load_file(tmp_path / "enc.safetensors"), strict=True)
    batch = tok(CAPTIONS)
    assert torch.equal(again(batch).pooled, enc(batch).pooled)


def test_mask_must_be_a_prefix():
    cfg, tok, enc = setup()
    b = tok(["a red circle"])
    bad = TokenBatch(b.ids, torch.tensor([[True, False, True]]), b.weights, b.words)
    with pytest.raises(ValueError, match="prefix"):
        enc(bad)


def test_config_roundtrip_and_errors():
    cfg = EncoderConfig(kind="recurrent", coding="latency", hidden=7)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="EncoderConfig.kind"):
        EncoderConfig(kind="bert")
    with pytest.raises(ValueError, match="EncoderConfig.coding"):
        EncoderConfig(coding="phase")
    with pytest.raises(ValueError, match="EncoderConfig.steps_per_token"):
        EncoderConfig(steps_per_token=0)
    with pytest.raises(ValueError, match="unknown option"):
        EncoderConfig.from_dict({"kind": "embedding", "width": 3})


def test_transformer_backbone_is_frozen_and_not_in_state_dict():
    cfg, tok, enc = setup("transformer")
    keys = list(enc.state_dict())
    assert not any("embeddings" in k or "encoder.layer" in k for k in keys), keys
    assert all(p.requires_grad for p in enc.parameters())
    assert sum(p.numel() for p in enc.parameters()) < 100_000  # the 22M backbone is not a parameter
    enc.train()
    code = enc(tok(["a red circle"]))
    code.pooled.sum().backward()
    assert enc.project[1].weight.grad.abs().sum() > 0
    feats = enc.backbone(tok(["a red circle"]), torch.device("cpu"))
    assert feats.shape == (1, 3, FEATURE_DIM) and not feats.requires_grad
    copy.deepcopy(enc)
    with pytest.raises(ValueError):
        enc.resize_vocab(len(tok) + 1)


def test_plot_spikes_writes_a_png(tmp_path):
    cfg, tok, enc = setup()
    batch = tok(["a (red:1.8) circle [left] of a blue square"])
    _, trains = enc.run(batch)
    path = plot_spikes(tmp_path / "raster.png", {k: v[:, 0] for k, v in trains.items()},
                       words=batch.words[0], steps_per_token=cfg.steps_per_token, title="a prompt")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("kind", ["embedding", "recurrent"])
def test_mixed_precision_forward_backward(kind):
    cfg, tok, enc = setup(kind)
    enc.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        code = enc(tok(CAPTIONS))
        loss = code.pooled.float().square().mean() + code.tokens.float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)
    assert enc.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("final_membrane", [True, False])
def test_pooled_code_reads_the_step_averages_and_optionally_the_final_membrane(final_membrane):
    """Naive reference: step the snntorch layers, average spikes and membrane over each prompt's
    real steps (and take the membrane at its last step), then the readout and CodeNorm."""
    cfg, tok, enc = setup("recurrent", final_membrane=final_membrane)
    batch = tok(["a red circle", "a big green triangle above a small yellow star"])
    code, _ = enc.run(batch, stepwise=True)
    spikes_in = enc.coder(torch.sigmoid(enc.token_features(batch)), batch.weights.float(), batch.mask)
    layer_spikes, mem = enc.stack(spikes_in, stepwise=True)
    rows = []
    for b, n in enumerate(batch.mask.sum(1).tolist()):
        steps = n * cfg.steps_per_token
        spk, m = layer_spikes[-1][:steps, b], mem[:steps, b]
        rows.append(torch.cat([spk.mean(0), m.mean(0)] + ([m[-1]] if final_membrane else [])))
    expected = enc.code_norm(enc.pooled_head(torch.stack(rows)))
    assert enc.pooled_head.linear.in_features == (3 if final_membrane else 2) * cfg.hidden
    torch.testing.assert_close(code.pooled, expected, atol=1e-5, rtol=1e-5)


def test_without_the_final_membrane_padding_still_changes_nothing():
    cfg, tok, enc = setup("recurrent", final_membrane=False)
    alone = enc(tok(["a red circle"]))
    padded = enc(tok(["a red circle", "a big green triangle above a small yellow star"]))
    assert torch.allclose(alone.pooled[0], padded.pooled[0], atol=1e-5)


def test_configs_saved_before_the_option_keep_the_final_membrane():
    saved = EncoderConfig(**SMALL).to_dict()
    del saved["final_membrane"]
    assert EncoderConfig.from_dict(saved).final_membrane
