"""The training loop on the tiny preset (CPU, a few steps): exact resume, fine-tuning, non-finite
losses, signals, the run directory, and the command line's errors."""
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from encoders.tokenizer import PromptCutWarning
from gan.checkpoint import CheckpointError, list_states
from gan.loss import GANLoss
from gan.stream import StreamSampler
from gan.train_config import TrainConfig, resolve_config, split_batch
from gan.training import NonFiniteLossError, train
from scripts.main_job import default_processes, training_finished
from scripts.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]

# Augmentation on and p rising (rt > target always), so resume must restore p and its RNG use.
TINY = dict(threads=1, augment={"mode": "ada", "target": -1.0, "speed_kimg": 0.5, "interval": 2})


def tiny(out, **kw) -> TrainConfig:
    return resolve_config("tiny", out=str(out), **{**TINY, **kw})


def caption_folder(path, captions):
    """A folder dataset of random 16 px images, one per caption (metadata.jsonl)."""
    path.mkdir()
    rng = np.random.default_rng(0)
    with open(path / "metadata.jsonl", "w") as f:
        for i, text in enumerate(captions):
            PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": text}) + "\n")
    return path


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """0.128 kimg of the tiny preset in one go (8 steps of 16 images)."""
    out = tmp_path_factory.mktemp("full")
    return train(tiny(out, kimg=0.128))


def test_long_captions_are_reported_once(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(tiny(tmp_path, kimg=0.032, snap=0.032, model={"encoder": {"max_length": 4}}))
    assert not [w for w in seen if issubclass(w.category, PromptCutWarning)]
    out = capsys.readouterr()
    report = [line for line in (out.out + out.err).splitlines() if "longer than max_length=4" in line]
    assert len(report) == 1 and report[0].endswith("(--max-length sets the limit of a fresh run)")


def test_grid_reads_dataset_captions_literally(tmp_path):
    captions = ["a :) face", "smile (", "a (big) grin", "a frown"]
    data = caption_folder(tmp_path / "faces", captions * 4)
    result = train(tiny(tmp_path / "run", data=str(data), kimg=0.016, snap=0.016))  # prompt syntax would raise
    [png] = list((result.out / "samples").glob("grid-*.png"))
    # The grid is the exported EMA model's images of the dataset's distinct captions, read literally.
    from gan.grid import render_grid
    from gan.model import load_model

    model, tokenizer = load_model(result.out / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptCutWarning)
        want = render_grid(model, tokenizer, sorted(set(captions), key=captions.index), [0, 1, 2, 3], device="cpu",
                           emphasis=False)
    assert np.array_equal(np.asarray(PIL.Image.open(png).convert("RGB")), np.asarray(want))


def test_exact_resume_equals_one_go(full_run, tmp_path):
    first = train(tiny(tmp_path, kimg=0.064))
    assert first.state.nimg == 64
    resumed = train(tiny(tmp_path, kimg=0.128, resume="latest"))
    assert resumed.state.nimg == full_run.state.nimg == 128
    assert resumed.state.augment_p == full_run.state.augment_p > 0
    assert_same(weights(resumed.model), weights(full_run.model))
    assert_same(weights(resumed.discriminator), weights(full_run.discriminator))
    assert_same(weights(resumed.ema), weights(full_run.ema))
    # The resumed run appended to log.jsonl: the encoder warm-up once (the resumed run loads the
    # warmed encoder and skips it), then ticks 0.032 .. 0.128 once each.
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records] == [0.0, 0.032, 0.064, 0.096, 0.128]
    assert "warmup/loss" in records[0] and not any("warmup/loss" in r for r in records[1:])


def test_run_directory(full_run):
    out = full_run.out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["kimg"] == 0.128 and cfg["model"]["name"] == "tiny" and cfg["model"]["vocab_size"] > 0
    assert cfg["model"]["discriminator"]["word_classes"] == cfg["model"]["vocab_size"]  # the word classifier
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["warmup/steps"] == 2 and math.isfinite(records[0]["warmup/loss"])  # tiny warms up 0.032 kimg
    for key in ("kimg", "loss/G", "loss/D", "loss/G_contrastive", "loss/D_contrastive", "loss/D_mismatch",
                "loss/G_mode_seeking", "loss/G_word", "loss/D_word", "loss/G_sketch",
                "augment_p", "sec_per_kimg", "spikes/firing_rate", "nonfinite_total"):
        assert key in records[-1], key
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["grid-0000.064.png", "grid-0000.128.png"]
    assert [p.name for p in list_states(out / "checkpoints")] == ["state-0000000064", "state-0000000128"]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert all((state / "sketch.safetensors").is_file() for state in list_states(out / "checkpoints"))
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert training_finished(out)  # the main job samples and scores only then
    from gan.model import load_model

    model, tokenizer = load_model(out / "model")
    assert_same(weights(model), weights(full_run.ema))
    assert len(tokenizer) == len(full_run.tokenizer)


def test_main_job_resumes_a_run_with_the_processes_that_saved_it(tmp_path, monkeypatch):
    """A run saved by one process resumes as one (its state has one RNG file), whatever the CPU."""
    monkeypatch.setattr("gan.reporting.usable_cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_processes(tmp_path) == 2  # a new run on 2 cores
    train(tiny(tmp_path, kimg=0.032))
    assert default_processes(tmp_path) == 1


def test_resume_with_a_sketch_the_run_never_had_is_refused(tmp_path):
    train(tiny(tmp_path, kimg=0.032, loss={"sketch_weight": 0.0}))
    with pytest.raises(CheckpointError, match="--sketch-weight"):
        train(tiny(tmp_path, kimg=0.064, resume="latest"))


def test_stream_sampler_deals_disjoint_shards_and_resumes():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    a = take(StreamSampler(size=10, rank=0, world=2, seed=3), 10)
    b = take(StreamSampler(size=10, rank=1, world=2, seed=3), 10)
    assert sorted(a[:5] + b[:5]) == list(range(10))  # one epoch split between the ranks
    assert take(StreamSampler(size=10, rank=1, world=2, seed=3, start=4), 6) == b[4:]


def test_split_batch_names_flags():
    assert split_batch(32, None, 2) == (16, 1)
    assert split_batch(32, 4, 2) == (4, 4)
    with pytest.raises(ValueError, match=r"--batch 30 is not a multiple of processes \(2\) x --batch-gpu \(4\) = 8"):
        split_batch(30, 4, 2)


def test_init_from_extends_vocabulary_keeping_old_words(full_run, tmp_path):
    data = caption_folder(tmp_path / "zoo", ["a striped zebra", "a grey elephant", "a red circle", "a tall giraffe"] * 2)
    old = full_run.tokenizer
    old_words = {w: old([w]).ids[0, 0].item() for w in ("red", "circle", "left")}
    result = train(tiny(tmp_path / "ft", data=str(data), kimg=0.032, init_from=str(full_run.out / "model")))
    new = result.tokenizer
    assert len(new) > len(old)
    assert {w: new([w]).ids[0, 0].item() for w in old_words} == old_words
    assert new(["zebra"]).ids[0, 0].item() >= len(old)  # a new word, appended
    assert result.ema.encoder.vocab_size == len(new) == result.ema.cfg.vocab_size
    D, R = result.discriminator, result.ema.cfg.resolution
    with torch.no_grad():  # a fresh word classifier with an output for every word, new ones too
        _, word_logits = D(torch.zeros(2, 3, R, R), torch.zeros(2, D.cfg.c_dim), words=True)
    assert word_logits.shape == (2, len(new))
    from gan.model import load_model

    model, tokenizer = load_model(tmp_path / "ft" / "model")
    assert len(tokenizer) == len(new)


def test_nonfinite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = GANLoss.g_main

    def flaky(self, **kw):
        loss, stats = original(self, **kw)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] in (2, 3) else (loss, stats)

    monkeypatch.setattr(GANLoss, "g_main", flaky)
    result = train(tiny(tmp_path, kimg=0.064))
    assert result.state.nonfinite_total == 2 and result.state.nonfinite_streak == 0
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("nonfinite_skips", 0) for r in records) == 2 and records[-1]["nonfinite_total"] == 2
    assert all(torch.isfinite(v).all() for v in weights(result.model).values())


def test_repeated_nonfinite_stops_with_last_state_whole(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = GANLoss.d_main

    def broken_after_snapshot(self, **kw):
        loss, stats = original(self, **kw)
        calls["n"] += 1
        return (loss * float("inf"), stats) if calls["n"] > 4 else (loss, stats)

    monkeypatch.setattr(GANLoss, "d_main", broken_after_snapshot)
    with pytest.raises(NonFiniteLossError, match="not finite in 3 consecutive steps"):
        train(tiny(tmp_path, kimg=0.128, max_nonfinite=3))
    states = list_states(tmp_path / "checkpoints")
    assert [p.name for p in states] == ["state-0000000064"]
    resumed = train(tiny(tmp_path, kimg=0.080, resume="latest"))  # the state loads and training goes on
    assert resumed.state.nimg == 80


def test_sigterm_writes_state_and_returns(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = GANLoss.d_main

    def signal_on_third(self, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, **kw)

    monkeypatch.setattr(GANLoss, "d_main", signal_on_third)
    result = train(tiny(tmp_path, kimg=0.128))
    assert result.interrupted and result.state.nimg == 48
    assert [p.name for p in list_states(tmp_path / "checkpoints")] == ["state-0000000048"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert not training_finished(tmp_path)  # so the main job stops too


def test_sigterm_during_the_warmup_exits_cleanly(tmp_path, monkeypatch, capsys):
    from gan.warmup import ImageTextScorer

    original = ImageTextScorer.forward

    def signal_on_first(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageTextScorer, "forward", signal_on_first)
    result = train(tiny(tmp_path, kimg=0.128))  # tiny warms up for 2 steps: the first runs, the second not
    assert result.interrupted and result.state.step == 0
    assert "SIGTERM received in the encoder warm-up, after 1 of its steps" in capsys.readouterr().out
    assert not list_states(tmp_path / "checkpoints") and not training_finished(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_to_the_process_group_writes_state(tmp_path):
    """A scheduler's SIGTERM (or a terminal's Ctrl-C) reaches the loader workers too. They leave it
    to the training process, which writes its final state and exits 0 (a worker killed by it made
    the loader raise instead)."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", "tiny", "--out", str(out),
           "--kimg", "100", "--snap", "50", "--workers", "1"]
    log = tmp_path / "output.txt"  # a file, not a pipe: a full pipe would stall the child
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        log_file = out / "log.jsonl"  # its first tick line (after the warm-up's): the loader's worker is running
        while not (log_file.exists() and "sec_per_kimg" in log_file.read_text()):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "SIGTERM received: state saved" in output
    assert len(list_states(out / "checkpoints")) == 1


@pytest.mark.parametrize("argv, flag", [
    (["--batch", "0"], "--batch"),
    (["--kimg", "-1"], "--kimg"),
    (["--minutes", "0"], "--minutes"),
    (["--snap", "0"], "--snap"),
    (["--gamma", "-0.5"], "--gamma"),
    (["--contrastive-weight", "-1"], "--contrastive-weight"),
    (["--match-weight", "-1"], "--match-weight"),
    (["--diversity-weight", "-1"], "--diversity-weight"),
    (["--word-weight", "-1"], "--word-weight"),
    (["--warmup-kimg", "-1"], "--warmup-kimg"),
    (["--lr", "0"], "--lr"),
    (["--threads", "0"], "--threads"),
    (["--workers", "-1"], "--workers"),
    (["--processes", "0"], "--processes"),
    (["--batch", "16", "--batch-gpu", "3"], "--batch-gpu"),
    (["--preset", "huge"], "--preset"),
    (["--data", "/no/such/dir"], "--data"),
    (["--init-from", "/no/such/model"], "--init-from"),
    (["--resume", "latest"], "--resume"),
    (["--resume", "latest", "--init-from", "x"], "--resume"),
    (["--metrics", "fid,bogus"], "--metrics"),
    (["--max-length", "0"], "--max-length"),
    (["--max-length", "8", "--resume", "latest"], "--max-length"),
    (["--max-length", "8", "--init-from", "x"], "--max-length"),
    (["--layout-resolution", "6"], "--layout-resolution"),
    (["--layout-resolution", "-8"], "--layout-resolution"),
    (["--layout-resolution", "8", "--resume", "latest"], "--layout-resolution"),
    (["--layout-resolution", "8", "--init-from", "x"], "--layout-resolution"),
    (["--layout-lr", "0"], "--layout-lr"),
    (["--warmup-layout-kimg", "-1"], "--warmup-layout-kimg"),
    (["--sketch-weight", "-1"], "--sketch-weight"),
    (["--sketch-weight", "1", "--warmup-kimg", "0"], "--warmup-kimg"),
    (["--sketch-weight", "1", "--layout-resolution", "0"], "--sketch-weight"),
])
def test_bad_options_name_the_flag(argv, flag, tmp_path, capsys):
    base = ["--out", str(tmp_path / "run")] + ([] if "--preset" in argv else ["--preset", "tiny"])
    code = train_main(base + argv)
    assert code != 0
    assert flag in capsys.readouterr().err


def test_argparse_choices_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        train_main(["--mixed-precision", "fp8"])
    assert "--mixed-precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--augment", "always"])
    assert "--augment" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--guide-weight", "--hard-negatives", "--warmup-hard-negatives", "--word-region",
                                    "--warmup-word-region"])
def test_removed_options_are_gone_from_the_command_line(option, capsys):
    with pytest.raises(SystemExit):
        train_main([option, "1"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_configs_naming_removed_options_load_only_when_inert():
    """A saved train or model config that names a removed option loads when the option is at its
    inert value (it changed nothing) and is refused, naming it, otherwise: it must not load wrong."""
    from gan.config import ModelConfig
    from gan.presets import preset

    d = resolve_config("tiny").to_dict()
    d["loss"].update(guide_weight=0.0, hard_negatives="off")
    d["warmup"].update(hard_negatives="off", word_region=False)
    assert TrainConfig.from_dict(d) == resolve_config("tiny")
    for section, key, value in (("loss", "guide_weight", 1.0), ("loss", "hard_negatives", "exchange"),
                                ("warmup", "word_region", True)):
        bad = json.loads(json.dumps(d))
        bad[section][key] = value
        with pytest.raises(ValueError, match=f"{section}.{key} = .*was removed"):
            TrainConfig.from_dict(bad)
    m = preset("tiny").to_dict()
    m["discriminator"].update(word_head="trunk", word_region=False, max_tokens=64)
    assert ModelConfig.from_dict(m) == preset("tiny")
    for key, value in (("word_head", "net"), ("word_region", True)):
        bad = json.loads(json.dumps(m))
        bad["discriminator"][key] = value
        with pytest.raises(ValueError, match=f"discriminator.{key} = .*was removed"):
            ModelConfig.from_dict(bad)


def test_dry_run_prints_resolved_config(capsys):
    assert train_main(["--preset", "tiny", "--kimg", "0.5", "--lr", "0.001", "--gamma", "2", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["kimg"] == 0.5 and cfg["train"]["g_lr"] == cfg["train"]["d_lr"] == 0.001
    assert cfg["train"]["loss"]["r1_gamma"] == 2 and cfg["train"]["batch"] == 16  # the preset's default
    assert train_main(["--preset", "tiny", "--contrastive-weight", "0.5", "--match-weight", "0", "--dry-run"]) == 0
    loss = json.loads(capsys.readouterr().out)["train"]["loss"]
    assert loss["contrastive_weight"] == 0.5 and loss["match_weight"] == 0 and loss["r1_gamma"] == 0.1
    assert cfg["model"]["resolution"] == 16
    assert train_main(["--preset", "tiny", "--warmup-kimg", "1", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["warmup"] == {"kimg": 1.0, "batch": 16, "lr": 1e-3,
                                                                      "layout_kimg": 0.016, "guides": False}
    assert train_main(["--preset", "tiny", "--max-length", "9", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)["model"]
    assert resolved["encoder"]["max_length"] == 9
    assert resolved["generator"]["layout_resolution"] == 8  # the tiny preset's
    assert train_main(["--preset", "tiny", "--layout-resolution", "0", "--layout-lr", "0.002", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["generator"]["layout_resolution"] == 0 and resolved["train"]["layout_lr"] == 0.002
    assert train_main(["--preset", "tiny", "--warmup-layout-kimg", "2.5", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["warmup"]["layout_kimg"] == 2.5
    assert train_main(["--preset", "tiny", "--discriminator", "projected+pixel", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["projected"]["pixel"] is True


def test_help_groups_core_options_first_and_lists_no_removed_option(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = capsys.readouterr().out
    groups = [text.index(g) for g in ("run:", "text conditioning:", "research")]
    assert groups == sorted(groups)
    first = {flag: text.index(flag, groups[0]) for flag in ("--data", "--contrastive-weight", "--sketch-weight")}
    assert first["--data"] < groups[1] < first["--contrastive-weight"] < groups[2] < first["--sketch-weight"]
    for removed in ("--guide-weight", "hard-negatives", "word-region"):
        assert removed not in text


def test_minutes_budget_stops_with_model_and_state_then_resumes_exactly(full_run, tmp_path, capsys):
    """--minutes: the run stops as on SIGTERM after the step that crosses the budget (here the
    first), with a grid, the exported model and a whole state; --resume latest then finishes it as
    one go would have."""
    stopped = train(tiny(tmp_path, kimg=0.128, minutes=1e-9))
    assert stopped.interrupted and stopped.state.nimg == 16
    assert "--minutes 1e-09 reached: state saved at 0.016 kimg" in capsys.readouterr().out
    assert [p.name for p in list_states(tmp_path / "checkpoints")] == ["state-0000000016"]
    assert (tmp_path / "model" / "model.safetensors").is_file() and not training_finished(tmp_path)
    resumed = train(tiny(tmp_path, kimg=0.128, resume="latest"))
    assert resumed.state.nimg == 128 and not resumed.interrupted
    assert_same(weights(resumed.model), weights(full_run.model))
    assert_same(weights(resumed.discriminator), weights(full_run.discriminator))


@pytest.mark.parametrize("pixel", [False, True])
def test_projected_discriminator_trains_and_resumes_exactly(tmp_path, pixel):
    """The projected D in the loop (tiny preset, backbone at 32 px), alone or with the pixel D beside it
    (--discriminator projected+pixel): a run stopped halfway and resumed equals one go, and its saved
    state holds D's heads and mixing (and the pixel D) but no backbone tensor."""
    projected = dict(kimg=0.064, snap=0.032, loss={"word_weight": 0.0},
                     model={"projected": {"backbone_resolution": 32, "pixel": pixel}})
    one_go = train(tiny(tmp_path / "one", **projected))
    from gan.discriminator import ProjectedAndPixel
    from gan.projected import ProjectedDiscriminator

    assert isinstance(one_go.discriminator, ProjectedAndPixel if pixel else ProjectedDiscriminator)
    train(tiny(tmp_path / "two", **{**projected, "kimg": 0.032}))
    resumed = train(tiny(tmp_path / "two", kimg=0.064, snap=0.032, loss={"word_weight": 0.0}, resume="latest"))
    assert_same(weights(resumed.model), weights(one_go.model))
    assert_same(weights(resumed.discriminator), weights(one_go.discriminator))
    from safetensors.torch import load_file

    saved = load_file(str(list_states(tmp_path / "two" / "checkpoints")[-1] / "model_1.safetensors"))
    prefix = "projected." if pixel else ""
    assert any(k.startswith(f"{prefix}heads.") for k in saved) and any(k.startswith(f"{prefix}mixing.") for k in saved)
    assert not any(k.startswith(f"{prefix}backbone.") for k in saved)
    assert any(k.startswith("pixel.") for k in saved) == pixel
    with pytest.raises(ValueError, match="--word-weight"):
        train(tiny(tmp_path / "words", **{**projected, "loss": {"word_weight": 1.0}}))


def test_encoder_lr_mult_zero_freezes_the_text_path_after_the_warmup(tmp_path):
    """With encoder_lr_mult 0 the GAN leaves the warmed text encoder as it was (no gradient
    reaches it) while G trains: runs of 1 and 2 snapshots end with the same encoder weights (its
    code norm's running statistics, buffers, keep tracking the batches)."""
    short = train(tiny(tmp_path / "short", kimg=0.032, encoder_lr_mult=0.0))
    long = train(tiny(tmp_path / "long", kimg=0.064, encoder_lr_mult=0.0))
    params = [dict(r.model.encoder.named_parameters()) for r in (short, long)]
    assert params[0] and all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    assert all(p.grad is None and not p.requires_grad for p in long.model.encoder.parameters())
    g_short, g_long = weights(short.model.generator), weights(long.model.generator)
    assert any(not torch.equal(g_short[k], g_long[k]) for k in g_short)


def test_grid_prompts_spread_over_the_datasets_distinct_captions():
    from gan.grid import grid_prompts

    captions = [f"keycap {i // 2}" for i in range(20)] + ["a smiling face", "a red apple"]  # 12 distinct
    assert grid_prompts(["a red circle"], captions, 4) == ["a red circle"]  # the preset's prompts win
    assert grid_prompts((), captions, 4) == ["keycap 0", "keycap 3", "keycap 6", "keycap 9"]
    assert grid_prompts((), captions, 12) == list(dict.fromkeys(captions))  # all of them, in order
    assert grid_prompts((), captions[:3], 12) == ["keycap 0", "keycap 1"]  # fewer distinct than rows
    assert grid_prompts((), [], 12) == []
