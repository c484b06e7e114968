"""Two CPU processes (gloo) train the tiny preset for a few steps: both must end with identical
weights and must have seen different images. Started with torchrun, which (unlike
`accelerate launch --cpu --num_processes 2`) really starts two processes here, as
`scripts/train.py --processes 2` does; its launcher stops and resumes such a run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
needs_torchrun = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this python")


def run_two_processes(script: str, tmp_path: Path, *, port: int, timeout: int) -> None:
    """Run `script` (Python source, given tmp_path as its argument) as two CPU processes of one
    thread under torchrun; fails the test with their stderr if they fail."""
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), str(path), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]

RUNNER = r'''
import json, sys
from pathlib import Path
from safetensors.torch import save_file
import data
import gan.training as T
from gan.train_config import resolve_config

out = Path(sys.argv[1])
seen = []
open_dataset = data.open_dataset

class Recording(__import__("torch").utils.data.Dataset):
    def __init__(self, inner):
        self.inner = inner
    def __len__(self):
        return len(self.inner)
    def __getitem__(self, i):
        seen.append(int(i))
        return self.inner[i]
    def captions(self, *a, **k):
        return self.inner.captions(*a, **k)

data.open_dataset = lambda *a, **k: Recording(open_dataset(*a, **k))
cfg = resolve_config("tiny", out=str(out / "run"), kimg=0.048, batch=16, batch_gpu=4, snap=0.048, threads=1,
                       workers=0, loss={"r1_interval": 2}, augment={"mode": "fixed", "p_init": 0.5})
result = T.train(cfg)
from accelerate import PartialState
state = PartialState()
rank = state.process_index
# Parameters only: buffers such as w_avg or CodeNorm's running statistics are tracked by each
# process from its own batches (DDP re-broadcasts rank 0's at every forward).
tensors = {f"G.{k}": v for k, v in result.model.named_parameters()}
tensors.update({f"D.{k}": v for k, v in result.discriminator.named_parameters()})
tensors.update({f"EMA.{k}": v for k, v in result.ema.named_parameters()})
save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"world": state.num_processes, "seen": seen,
                                                   "nimg": result.state.nimg}))
'''


@needs_torchrun
def test_two_processes_agree_and_split_the_data(tmp_path):
    run_two_processes(RUNNER, tmp_path, port=29531, timeout=300)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["nimg"] == info[1]["nimg"] == 48  # 3 steps of 16 = 2 processes x 4 x 2 accumulation
    # The tiny preset's warm-up (32 pairs for the encoder, 16 for the layout map alone) and the
    # GAN's batches are split between the processes.
    assert len(info[0]["seen"]) == len(info[1]["seen"]) == 16 + 8 + 24
    seen0, seen1 = info[0]["seen"], info[1]["seen"]
    assert not set(seen0[:24]) & set(seen1[:24]) and not set(seen0[24:]) & set(seen1[24:])
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys()
    assert any(k.startswith("G.encoder.") for k in w0) and any(k.startswith("EMA.") for k in w0)
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=1e-6, rtol=0, msg=k)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    state = run / "checkpoints" / "state-0000000048"
    assert (state / "rng-0.safetensors").is_file() and (state / "rng-1.safetensors").is_file()


LAUNCHER = r'''
import sys
from scripts import train
out = sys.argv[1]
args = ["--data", "shapes", "--preset", "tiny", "--out", out, "--kimg", "2", "--snap", "0.25", "--workers", "0",
        "--processes", "2"]
if len(sys.argv) > 2:
    args += ["--resume", "latest"]
sys.exit(train.main(args))
'''


@needs_torchrun
def test_train_processes_passes_a_stop_on_and_its_run_resumes(tmp_path):
    """`train.py --processes 2` (the main job's two CPU processes): a SIGTERM to the launcher
    reaches each process once, so they save a whole state and it returns 0; run again with
    --resume latest, the run ends where it was meant to."""
    from gan.checkpoint import list_states, read_trainer

    launcher, out = tmp_path / "launch.py", tmp_path / "run"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, str(launcher), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints").is_dir() or not list_states(out / "checkpoints"):
        assert proc.poll() is None and time.time() < deadline, "no state was written"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log[-3000:]
    assert "SIGTERM received: state saved" in log
    stopped_at = read_trainer(list_states(out / "checkpoints")[-1])["loop"]["nimg"]
    assert 0 < stopped_at < 2000
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    done = subprocess.run([sys.executable, str(launcher), str(out), "resume"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    assert read_trainer(list_states(out / "checkpoints")[-1])["loop"]["nimg"] >= 2000


CODE_NORM = r'''
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from encoders.encoder import CodeNorm

dist.init_process_group("gloo")
rank = dist.get_rank()
x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
w = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
rows = slice(4 * rank, 4 * rank + 4)
norm = CodeNorm(features=5).double().train()
norm.synced = True
mine = x[rows].clone().requires_grad_(True)
out = norm(mine)
(out * w[rows]).sum().backward()
save_file({"out": out.detach(), "grad": mine.grad, "mean": norm.running_mean, "var": norm.running_var},
          f"{sys.argv[1]}/norm{rank}.safetensors")
dist.destroy_process_group()
'''


@needs_torchrun
def test_synced_code_norm_over_two_processes_equals_one_process_over_both_halves(tmp_path):
    """CodeNorm.synced (set by a multi-process training loop): two processes with 4 prompts each
    give the outputs, input gradients and running statistics of one process with all 8."""
    from encoders.encoder import CodeNorm

    run_two_processes(CODE_NORM, tmp_path, port=29533, timeout=120)
    got = [load_file(str(tmp_path / f"norm{r}.safetensors")) for r in (0, 1)]

    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    norm = CodeNorm(features=5).double().train()
    x.requires_grad_(True)
    out = norm(x)
    (out * w).sum().backward()
    torch.testing.assert_close(torch.cat([g["out"] for g in got]), out.detach())
    torch.testing.assert_close(torch.cat([g["grad"] for g in got]), x.grad)
    for g in got:
        torch.testing.assert_close(g["mean"], norm.running_mean)
        torch.testing.assert_close(g["var"], norm.running_var)


WARMUP = r"""
import torch
from gan.train_config import resolve_config
import gan.training as T
from gan.warmup import run_warmup


class Quiet:
    def print(self, *a, **k):
        pass


def warm(rank, world, stopped):
    torch.manual_seed(0)
    # Frozen rate noise: fresh noise would be drawn per process, not as one process draws it.
    cfg = resolve_config("tiny", out="unused", workers=0, warmup={"kimg": 0.032, "batch": 16, "layout_kimg": 0.064},
                         model={"encoder": {"rate_noise": "frozen"}})
    dataset, _, model, _, tokenizer, model_cfg = T.build_networks(cfg, None, Quiet())
    warm, teacher, _ = run_warmup(cfg.warmup, model.encoder, dataset, tokenizer, seed=0, workers=0,
                                  resolution=model_cfg.resolution, device=torch.device("cpu"),
                                  any_process_stopped=stopped, layout=model.generator.synthesis.layout,
                                  rank=rank, world=world)
    tensors = {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    tensors.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    for key in ("warmup/loss", "warmup/accuracy", "warmup/layout_error"):
        if key in warm:
            tensors[key] = torch.tensor([warm[key]])
    return tensors
"""

WARMUP_MAIN = WARMUP + r"""
import sys
import torch.distributed as dist
from safetensors.torch import save_file

dist.init_process_group("gloo")


def stopped(stop):
    flag = torch.tensor([float(stop["signal"] is not None)])
    dist.all_reduce(flag)
    return bool(flag.item())


rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in warm(rank, 2, stopped).items()}, f"{sys.argv[1]}/warm{rank}.safetensors")
dist.destroy_process_group()
"""


@needs_torchrun
def test_warm_up_split_over_two_processes_equals_one_process(tmp_path):
    """A two-process warm-up (each process half of every batch; the codes and image embeddings
    gathered, gradients summed) ends where one process ends on the whole batches: the same
    encoder, map, sketch head, loss and errors."""
    run_two_processes(WARMUP_MAIN, tmp_path, port=29535, timeout=180)
    got = [load_file(str(tmp_path / f"warm{r}.safetensors")) for r in (0, 1)]
    scope: dict = {}
    exec(compile(WARMUP, "warmup", "exec"), scope)
    want = scope["warm"](0, 1, lambda stop: stop["signal"] is not None)
    fresh = scope["warm"](0, 1, lambda stop: True)  # stopped at once: the layout is untrained
    assert got[0].keys() == got[1].keys() == want.keys()
    for part in ("teacher.layout.", "encoder."):  # both phases moved them
        assert any(not torch.equal(want[k], fresh[k]) for k in want if k.startswith(part)), part
    # The pooled head's biases add a constant before CodeNorm subtracts the batch mean: their
    # gradient is 0 up to rounding, which Adam scales to whole steps of either sign; the running
    # mean follows them.
    rounding = {"encoder.pooled_head.norm.bias", "encoder.pooled_head.linear.bias", "encoder.code_norm.running_mean"}
    assert rounding <= want.keys()
    for g in got:
        for k in want.keys() - rounding:
            torch.testing.assert_close(g[k], want[k], atol=2e-5, rtol=1e-4, msg=k)
