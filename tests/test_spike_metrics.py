"""The emphasis, order and energy metrics on hand-built cases whose answers are known, and the
three through the eval CLI on the tiny preset."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from data.shapes import COLOURS, POSITIONS, RELATIONS, ShapeObject, ShapesDataset, render_scene_chw
from encoders import EncoderConfig, build_encoder, make_tokenizer, parse_prompt
from eval import cli
from eval.attributes import HEADS, ProbeConfig
from eval.emphasis import WEIGHTS, emphasis_series, measure_emphasis, prominence, spearman
from eval.energy import PJ_PER_MAC, PJ_PER_SYNOP, count_flops, encoder_energy, layer_energy
from eval.order import WORDINGS, measure_order, placed

R = 32


# ----------------------------------------------------------------------------------------
# emphasis


def square_drawer(prompts, seeds):
    """Fake generator: a square in the prompt's colour on white, its side set by the size word's
    weight (large: grows with it, small: shrinks), and round(side * w / 2.5) of its columns in the
    named colour (the rest another colour), w the colour word's weight."""
    out = []
    for prompt in prompts:
        weights = dict(parse_prompt(prompt))
        colour = next(w for w in weights if w in COLOURS)
        size = next(w for w in weights if w in ("small", "large"))
        side = round(10 * weights[size]) if size == "large" else round(10 / weights[size])
        named = min(side, round(side * weights[colour] / 2.5))
        img = torch.full((3, R, R), 255, dtype=torch.uint8)
        lo = (R - side) // 2
        other = "green" if colour == "blue" else "blue"
        img[:, lo : lo + side, lo : lo + side] = torch.tensor(COLOURS[other])[:, None, None]
        img[:, lo : lo + side, lo : lo + named] = torch.tensor(COLOURS[colour])[:, None, None]
        out.append(img)
    return torch.stack(out)


def seed_noise_drawer(prompts, seeds):
    """Fake generator that ignores the prompt: noise from the seed alone."""
    return torch.stack([torch.randint(0, 256, (3, R, R), generator=torch.Generator().manual_seed(s), dtype=torch.uint8)
                        for s in seeds])


def test_spearman_and_prominence_on_small_cases():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(3 / math.sqrt(10))  # tied ranks 1.5, 1.5
    img = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)  # white, with 3 red and 1 pink pixels
    img[0, :, 0, :3] = torch.tensor(COLOURS["red"])[:, None]
    img[0, :, 1, 0] = torch.tensor(COLOURS["pink"])
    assert prominence(img, "red", "colour").item() == pytest.approx(0.75)
    assert prominence(img, "large", "size").item() == pytest.approx(4 / 16)
    assert prominence(img, "small", "size").item() == pytest.approx(-4 / 16)


def test_series_emphasise_one_word_over_the_weights():
    series = emphasis_series(seed=5, prompts=2, seeds=3)
    assert len(series) == 2 * 2 * 3 and {s.seed for s in series} == {5, 6, 7}
    s = series[0]
    assert s.kind == "colour" and len(s.prompts) == len(WEIGHTS)
    assert [dict(parse_prompt(p))[s.word] for p in s.prompts] == pytest.approx(list(WEIGHTS))
    assert all(w == 1.0 for p in s.prompts for word, w in parse_prompt(p) if word != s.word)


def test_a_generator_that_follows_the_weight_gives_spearman_one():
    out = measure_emphasis(square_drawer, seed=0, prompts=4, seeds=2)
    assert out["emphasis_spearman_colour"] == pytest.approx(1.0)
    assert out["emphasis_spearman_size"] == pytest.approx(1.0)
    assert out["emphasis_spearman"] == pytest.approx(1.0)
    assert out["emphasis_change_per_unit"] > 0.01 and out["emphasis_series"] == 16
    assert out["emphasis_seed_change"] == 0.0  # this fake ignores the seed


def test_a_generator_that_ignores_the_weight_changes_nothing():
    out = measure_emphasis(seed_noise_drawer, seed=0, prompts=4, seeds=2)
    assert out["emphasis_change_per_unit"] == 0.0 and out["emphasis_spearman"] == 0.0
    assert out["emphasis_seed_change"] > 0.2  # independent uniform noise: about 1/3


# ----------------------------------------------------------------------------------------
# order


def parse_two_objects(prompt):
    """"a red circle left of a blue square" -> (a, b, relation)."""
    words = prompt.split()
    relation = next(r for r in RELATIONS if f" {r} " in prompt)
    a = ShapeObject(words[2], words[1], "small", "left")
    b = ShapeObject(words[-1], words[-2], "small", "right")
    return a, b, relation


def following_drawer(prompts, seeds):
    return torch.stack([torch.from_numpy(render_scene_chw(placed(*parse_two_objects(p), "white"), R)) for p in prompts])


def order_blind_drawer(prompts, seeds):
    """Reads the words but not their order: the colours in alphabetical order along the relation's axis."""
    out = []
    for p in prompts:
        a, b, rel = parse_two_objects(p)
        first, second = sorted((a, b), key=lambda o: o.colour)
        out.append(torch.from_numpy(render_scene_chw(placed(first, second, "left of" if rel in ("left of", "right of")
                                                            else "above", "white"), R)))
    return torch.stack(out)


def oracle_predict(images):
    """Reads rendered scenes back exactly: an object wherever a place's centre pixel holds an
    object colour; slot A is the left / top one. Heads the metric does not read stay 0."""
    palette = {v: k for k, v in COLOURS.items()}
    rows = []
    for img in images:
        found = []
        for pos, (fx, fy) in POSITIONS.items():
            rgb = tuple(img[:, int(fy * R), int(fx * R)].tolist())
            if rgb in palette:
                found.append((pos, palette[rgb]))
        found.sort(key=lambda f: ("left", "top", "centre", "right", "bottom").index(f[0]))
        pred = dict.fromkeys(HEADS, 0)
        pred["count"] = len(found) - 1
        for slot, (pos, colour) in zip(("a", "b"), found):
            pred[f"{slot}_colour"] = HEADS[f"{slot}_colour"].index(colour)
            pred[f"{slot}_position"] = HEADS[f"{slot}_position"].index(pos)
        rows.append([pred[h] for h in HEADS])
    return torch.tensor(rows)


def test_a_generator_that_follows_the_wording_scores_one():
    out = measure_order(following_drawer, oracle_predict, R, scenes=8, seeds=2)
    assert all(out[f"order_{w}"] == 1.0 for w in WORDINGS) and out["order_mean"] == 1.0
    assert out["order_exchanged_as_original"] == 0.0 and out["order_images"] == 16


def test_a_generator_blind_to_word_order_follows_one_of_two_twins():
    out = measure_order(order_blind_drawer, oracle_predict, R, scenes=8, seeds=2)
    assert out["order_original"] + out["order_exchanged"] == pytest.approx(1.0)  # same words, same image
    assert out["order_exchanged_as_original"] == out["order_original"]
    assert 0 < out["order_original"] < 1 and out["order_mean"] < 0.75


# ----------------------------------------------------------------------------------------
# energy




def test_count_flops_counts_by_hand_through_multihead_attention():
    lin = nn.Linear(5, 3)
    assert count_flops(lambda: lin(torch.randn(4, 5))) == 2 * 4 * 5 * 3
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()  # FlopCounterMode's module tracker fails here
    x = torch.randn(1, 6, 8)
    with torch.no_grad():  # the fused fast path, which the counter alone would count as 0
        assert count_flops(lambda: attn(x, x, x)) == 2 * (4 * 6 * 8 * 8 + 2 * 6 * 6 * 8)  # 4 projections, QK^T, AV
    q = torch.randn(1, 2, 6, 4)
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 2 * 2 * (2 * 6 * 6 * 4)


def two_neuron_encoder(K=2):
    """An embedding encoder with 2 input channels, 2 layers of 2 neurons, beta 0 (no memory) and
    latency coding (each channel fires once per token window). Synapses: input channel 0 -> neuron
    0 with weight 1.5, layer-1 neuron 0 -> layer-2 neuron 0 with 1.5, all else 0: each token
    window holds 2 input spikes, one spike of neuron 0 in layer 1 and one in layer 2."""
    cfg = EncoderConfig(kind="embedding", code_dim=4, embed_dim=2, hidden=2, num_layers=2, steps_per_token=K,
                        coding="latency", beta=0.0)
    tok = make_tokenizer(cfg, ["a red circle"])
    enc = build_encoder(cfg, len(tok)).eval()
    with torch.no_grad():
        enc.embed.weight.zero_()  # p = sigmoid(0) = 0.5 >= 0.01: every channel fires once per window
        for layer in enc.stack.layers:
            layer.fc.weight.zero_()
            layer.fc.bias.zero_()
            layer.fc.weight[0, 0] = 1.5
    return cfg, tok, enc


def test_energy_of_a_two_neuron_network_counted_by_hand():
    cfg, tok, enc = two_neuron_encoder(K=2)
    _, trains = enc.run(tok(["a red circle"]))
    assert [int(trains[k].ne(0).sum()) for k in ("input", "layer1", "layer2")] == [6, 3, 3]
    out = encoder_energy(enc, tok, ["a red circle"], device="cpu", emphasis=False)
    T, H, C = 3 * 2, 2, cfg.code_dim
    assert out["energy_spikes"] == 6 + 3 + 3
    assert out["energy_synops"] == 6 * 2 + 3 * 2  # input spikes and layer-1 spikes, each x fan-out 2
    assert out["energy_dense_macs"] == T * (2 * H + H * H)  # = 48
    assert out["energy_firing_rate"] == pytest.approx((3 + 3) / (2 * H * T))  # = 0.25
    # Software FLOPs: two synapse matmuls over all T steps, the pooled readout (3H -> C) once and
    # the token readout (2H -> C) per token; 2 FLOPs per multiply-accumulate.
    readouts = 3 * H * C + 3 * 2 * H * C
    assert out["energy_encoder_flops"] == 2 * (T * (2 * H + H * H) + readouts)
    assert out["energy_other_macs"] == readouts
    energy = layer_energy(out["energy_synops"], out["energy_dense_macs"], out["energy_other_macs"], spiking=True)
    assert energy["energy_layers_pj"] == pytest.approx(18 * 0.9)
    assert energy["energy_dense_pj"] == pytest.approx(48 * 4.6)
    assert energy["energy_ratio"] == pytest.approx(18 * 0.9 / (48 * 4.6))
    assert energy["energy_encoder_ratio"] == pytest.approx((18 * 0.9 + readouts * 4.6) / ((48 + readouts) * 4.6))
    dense = layer_energy(48, 48, 10, spiking=False)
    assert dense["energy_layers_pj"] == dense["energy_dense_pj"] == pytest.approx(48 * PJ_PER_MAC)
    assert dense["energy_encoder_ratio"] == 1.0
    assert PJ_PER_SYNOP == 0.9 and PJ_PER_MAC == 4.6


@pytest.mark.parametrize("kind,extra", [("embedding", {}), ("recurrent", {}), ("recurrent", {"recurrent_cell": "slstm"})])
def test_macs_outside_the_spiking_layers_are_the_readouts(kind, extra):
    """The FLOP count of the whole encoder is the spiking layers' dense MACs plus the readouts."""
    torch.manual_seed(0)
    cfg = EncoderConfig(kind=kind, code_dim=8, embed_dim=6, hidden=5, steps_per_token=3, **extra)
    prompts = ["a red circle", "a blue square left of a red circle"]
    tok = make_tokenizer(cfg, prompts)
    enc = build_encoder(cfg, len(tok)).eval()
    out = encoder_energy(enc, tok, prompts, device="cpu", emphasis=False)
    tokens = (3 + 8) / 2  # per prompt
    assert out["energy_other_macs"] == pytest.approx(3 * 5 * 8 + tokens * 2 * 5 * 8)  # pooled + token readouts
    per_step = 6 * 5 + 5 * 5 + {"embedding": 0, "recurrent": 5 * 5 if not extra else 8 * 5 * 5}[kind]
    assert out["energy_dense_macs"] == pytest.approx(tokens * 3 * per_step)


# ----------------------------------------------------------------------------------------
# through the CLI


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from eval import fitted
    from gan.model import TextToImage, save_model
    from gan.presets import preset

    root = tmp_path_factory.mktemp("spike-metrics")
    cfg = preset("tiny")
    tok = make_tokenizer(cfg.encoder, ShapesDataset(16).captions(limit=512))
    cfg = dataclasses.replace(cfg, vocab_size=len(tok))
    torch.manual_seed(0)
    save_model(root / "spiking", TextToImage(cfg), tok)
    dense = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, spikes=False))
    torch.manual_seed(0)
    save_model(root / "dense", TextToImage(dense), tok)
    fitted.fit_probe(ProbeConfig(resolution=16, channels=4, hidden=8, train_images=64, steps=2, heldout_images=16),
                      out=root / "probe")
    return root


def test_cli_writes_finite_emphasis_order_and_energy(tiny_setup, tmp_path, capsys):
    out = tmp_path / "s.json"
    rc = cli.main(["--model", str(tiny_setup / "spiking"), "--model", str(tiny_setup / "dense"), "--data", "shapes",
                   "--metrics", "emphasis,order,energy,variety", "--num", "6", "--batch", "16", "--probe",
                   str(tiny_setup / "probe"), "--device", "cpu", "--json", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    spiking, dense = (row["values"] for row in json.loads(out.read_text())["rows"])
    for values in (spiking, dense):
        numbers = {k: v for k, v in values.items() if k != "energy_source"}
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values()), numbers
        assert -1 <= values["emphasis_spearman"] <= 1 and 0 <= values["order_mean"] <= 1
        assert values["emphasis_series"] == 16 * 2 * 4 and values["order_images"] == 64 * 4
        assert values["variety_images"] == 32 * 8 and 0 <= values["variety_size_real"] <= 1
        assert "Horowitz" in values["energy_source"] and "ISSCC 2014" in values["energy_source"]
        assert values["energy_g_flops"] > values["energy_encoder_flops"] > 0 and values["energy_d_flops"] > 0
        assert 0 < values["energy_encoder_share"] < 1
    assert spiking["energy_spiking"] == 1 and dense["energy_spiking"] == 0
    assert 0 < spiking["energy_firing_rate"] < 1 and dense["energy_firing_rate"] == 1.0
    assert spiking["energy_synops"] < spiking["energy_dense_macs"] and spiking["energy_ratio"] < 1
    assert dense["energy_ratio"] == 1.0 and dense["energy_dense_macs"] == spiking["energy_dense_macs"]
    assert dense["energy_g_flops"] == spiking["energy_g_flops"]


def test_raster_and_emphasis_strip_pictures(tiny_setup, tmp_path, capsys):
    import PIL.Image

    from scripts.spike_raster_strip import main

    argv = ["--model", str(tiny_setup / "spiking"), "--out", str(tmp_path), "--name", "tiny",
            "--prompt", "a small red circle on the left", "--word", "red", "--seed", "3"]
    assert main(argv) == 0
    raster, strip = tmp_path / "tiny-raster.png", tmp_path / "tiny-emphasis.png"
    assert raster.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with PIL.Image.open(strip) as im:
        assert im.size == (len(WEIGHTS) * 16 * 4, 16 * 4 + 14)
        tiles = [np.asarray(im.crop((i * 64, 0, (i + 1) * 64, 64))) for i in range(len(WEIGHTS))]
    assert any(not np.array_equal(tiles[0], t) for t in tiles[1:])  # a fresh G already moves with the weight
    assert main([*argv[:-4], "--word", "blue", "--seed", "3"]) == 2
    assert "--word 'blue'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none"), *argv[2:]]) == 2
    assert "--model" in capsys.readouterr().err
