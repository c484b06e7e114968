"""TextToImage save/load: rebuild from config alone, identical output, strict and safe loading."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import encoders
from gan.config import ModelConfig
from gan.presets import preset
from gan.model import TextToImage, clean_state_dict, load_model, save_model

CAPTIONS = ["a red circle left of a blue square", "a small green triangle", "two yellow stars"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("tiny")
    tok = encoders.make_tokenizer(cfg.encoder, CAPTIONS)
    cfg = cfg.replace(vocab_size=len(tok))
    model = TextToImage(cfg).eval()
    with torch.no_grad():  # make the non-zero-init parameters matter
        for p in model.generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("model")
    save_model(d, model, tok)
    return d, model, tok


def render(model, tok):
    batch = tok(CAPTIONS)
    z = torch.randn(len(CAPTIONS), model.cfg.generator.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(z, batch, noise_mode="const", psi=0.7)


def test_roundtrip_identical_output(saved):
    d, model, tok = saved
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, tok2 = load_model(d)
    assert not loaded.training and len(tok2) == len(tok)
    assert torch.equal(render(model, tok), render(loaded, tok2))
    assert json.loads((d / "config.json").read_text())["vocab_size"] == len(tok)


class CompiledLike(torch.nn.Module):
    """Holds its module as `_orig_mod`, like torch.compile's OptimizedModule (without importing dynamo)."""

    def __init__(self, mod):
        super().__init__()
        self._orig_mod = mod

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)


def test_compiled_or_wrapped_models_save_plain_keys(saved, tmp_path):
    _, model, tok = saved
    wrapped = torch.nn.DataParallel(model)
    model.generator.mapping = CompiledLike(model.generator.mapping)  # prefixes inside: ..._orig_mod...
    try:
        keys = clean_state_dict(wrapped).keys()
        assert not any("_orig_mod" in k or k.startswith("module.") for k in keys)
        save_model(tmp_path, wrapped, tok)
    finally:
        model.generator.mapping = model.generator.mapping._orig_mod
    loaded, _ = load_model(tmp_path)
    assert torch.equal(render(model, tok), render(loaded, tok))


def test_missing_files_name_the_file(saved, tmp_path):
    d, _, _ = saved
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        other = tmp_path / name.replace(".", "_")
        other.mkdir()
        for f in d.iterdir():
            if f.name != name:
                (other / f.name).write_bytes(f.read_bytes())
        with pytest.raises(FileNotFoundError, match=name):
            load_model(other)


def test_corrupt_and_mismatched_weights_are_refused(saved, tmp_path):
    d, _, _ = saved
    for f in d.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path)
    state = load_file(str(d / "model.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_model(tmp_path)
    # A config that disagrees with the weights.
    (tmp_path / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg["generator"]["w_dim"] += 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path)
    cfg["generator"]["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)


def test_pickles_are_never_read(saved, tmp_path):
    d, model, _ = saved
    for f in d.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    torch.save(model.state_dict(), tmp_path / "model.safetensors")  # a pickle under the expected name
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path)


def test_vocab_size_must_match_tokenizer(saved, tmp_path):
    _, model, tok = saved
    bigger = encoders.make_tokenizer(model.cfg.encoder, CAPTIONS + ["a purple hexagon"])
    with pytest.raises(ValueError, match="vocab_size"):
        save_model(tmp_path, model, bigger)
    with pytest.raises(ValueError, match="vocab_size"):
        TextToImage(model.cfg.replace(vocab_size=0))


@pytest.mark.parametrize("name", ["tiny", "shapes32", "custom256"])
def test_config_json_roundtrip(name):
    cfg = preset(name).replace(vocab_size=123)
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.generator.attn_resolutions, tuple)


def test_projected_config_saved_before_batch_norm_field_keeps_its_batch_norm():
    cfg = preset("custom32").replace(vocab_size=123)
    assert cfg.projected.batch_norm is False and cfg.projected.pixel is True
    old = cfg.to_dict()
    del old["projected"]["batch_norm"]  # a run saved before the field had batch norm in its heads
    assert ModelConfig.from_dict(old).projected.batch_norm is True
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_mismatch_errors_name_the_option():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="c_dim"):
        cfg.replace(generator=cfg.generator.__class__(resolution=16, c_dim=cfg.encoder.code_dim + 1))
    with pytest.raises(ValueError, match="resolution"):
        cfg.replace(resolution=32)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_gradients_reach_the_encoder_weights(saved):
    _, model, tok = saved
    model.zero_grad()
    z = torch.randn(len(CAPTIONS), model.cfg.generator.z_dim)
    model(z, tok(CAPTIONS)).square().mean().backward()  # eval mode: state (w_avg) untouched
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert grads and sum(g.abs().sum() for g in grads if g is not None) > 0
