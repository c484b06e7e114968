"""Every benchmark script the README names runs on its smallest setting and writes its JSON keys."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from scripts import bench, bench_data, bench_encoders, bench_eval, bench_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def written(path, returned: dict) -> dict:
    """The JSON file a script wrote; it must hold what the script returned."""
    payload = json.loads(path.read_text())
    assert payload == json.loads(json.dumps(returned, default=list))
    return payload


def positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


NETWORK_KEYS = {"g_forward_img_s", "g_forward_gflops", "train_step_img_s", "train_step_gflops",
                "train_step_gflop_per_img", "g_params", "d_params", "train_step_of_peak"}


def test_bench_networks_on_shapes32_and_the_reference(tmp_path):
    # shapes32's layout map once crashed the FLOP counter's module tracker (G forward under no_grad).
    out = written(tmp_path / "b.json", bench.main(["--configs", "reference,shapes32", "--batch", "2", "--reps", "1",
                                                   "--warmup", "0", "--peak-batch", "1", "--json", str(tmp_path / "b.json")]))
    assert set(out) == {"device", "threads", "omp_wait_policy", "batch", "torch", "compile", "amp", "channels_last",
                        "fused_modconv", "joint_d", "conv_peak_by_format", "conv_peak_gflops", "reference", "shapes32"}
    assert set(out["conv_peak_by_format"]) == {"nchw", "channels_last"}
    for name in ("reference", "shapes32"):
        assert set(out[name]) == NETWORK_KEYS and positive(*out[name].values()), out[name]
    assert out["shapes32"]["g_params"] != out["reference"]["g_params"]


def test_bench_eval(tmp_path):
    out = written(tmp_path / "e.json", bench_eval.main(["--batch", "2", "--repeats", "1", "--resolution", "16",
                                                        "--stream", "3", "--keep-freed-memory", "off",
                                                        "--json", str(tmp_path / "e.json")]))
    assert {"threads", "batch", "gflop_per_image", "wall", "cpu", "stream_images", "peak_rss_mb"} <= set(out)
    assert out["stream_images"] == 3 and 11 < out["gflop_per_image"] < 12  # Inception-v3 at 299 px: 5.7 G multiply-adds
    for kind in ("wall", "cpu"):
        assert {"conv3x3_peak_gflops", "plain_images_per_s", "torchscript_images_per_s", "speedup_vs_torchscript",
                "end_to_end_images_per_s"} <= set(out[kind])
        assert positive(out[kind]["plain_images_per_s"], out[kind]["end_to_end_images_per_s"])


def test_bench_encoders(tmp_path):
    out = written(tmp_path / "n.json", bench_encoders.main(["--batch", "3", "--length", "4", "--reps", "1",
                                                            "--gan-preset", "tiny", "--json", str(tmp_path / "n.json")]))
    assert set(out) == {"embedding", "recurrent/rleaky", "recurrent/slstm", "transformer/warm", "transformer/cold",
                        "gan_share"}
    for name in set(out) - {"gan_share"}:
        assert {"train_ms", "eval_ms", "spikes_per_prompt", "firing_rate", "params"} <= set(out[name])
        assert out[name]["tokens"][0] == 3 and positive(out[name]["train_ms"])
    assert out["gan_share"]["preset"] == "tiny" and 0 < out["gan_share"]["share"] < 1


def test_bench_data(tmp_path):
    emoji = tmp_path / "emoji"
    emoji.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(emoji / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"emoji {i}"}))
    (emoji / "metadata.jsonl").write_text("\n".join(lines + ['{"file_name": "gone.png", "text": "x"}']) + "\n")
    out = written(tmp_path / "d.json", bench_data.main(["--emoji", str(emoji), "--repeats", "1", "--shapes-count", "8",
                                                        "--shapes-resolutions", "16", "--json", str(tmp_path / "d.json")]))
    assert set(out) == {"torch", "threads", "repeats", "load_average", "emoji", "shapes"}
    assert out["emoji"]["scan"]["1_threads"]["kept"] == 5 and out["emoji"]["scan"]["2_threads"]["skipped"] == 1
    assert out["emoji"]["prepare"]["images"] == 5
    assert set(out["shapes"]) == {"items_32", "render_32", "loader_32", "items_16"}
    for rate in [out["emoji"][k] for k in ("load_prepared", "load_prepared_loader", "decode_folder")] + list(out["shapes"].values()):
        assert set(rate) == {"per_s", "per_cpu_s"} and positive(rate["per_s"])


def test_bench_sample(tmp_path):
    out = written(tmp_path / "s.json", bench_sample.main(["--presets", "tiny", "--batch", "8", "--reps", "1",
                                                          "--warmup", "0", "--threads", "1",
                                                          "--json", str(tmp_path / "s.json")]))
    assert set(out) == {"device", "threads", "torch", "reps", "tiny"}
    assert out["tiny"]["resolution"] == 16 and set(out["tiny"]) >= {"g_params", "encoder_params", "8x8", "1x64"}
    for workload in ("8x8", "1x64"):
        assert set(out["tiny"][workload]) == {"g_forward_img_s", "pipe_pt_img_s", "pipe_pil_img_s", "pipe_over_g"}
        assert positive(*out["tiny"][workload].values())
