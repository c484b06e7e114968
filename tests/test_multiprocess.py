"""Two CPU processes (gloo) train the tiny preset for a few steps: both must end with identical
weights and must have seen different images. Started with torchrun, which (unlike
`accelerate launch --cpu --num_processes 2`) really starts two processes here."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_two_processes_agree_and_split_the_data(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", str(runner), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["nimg"] == info[1]["nimg"] == 48  # 3 steps of 16 = 2 processes x 4 x 2 accumulation
    # The tiny preset's warm-up reads 48 pairs first (32 for the encoder, 16 for the layout map
    # alone), the same ones on both processes (each warms up alike); the GAN's batches are then
    # split between them.
    warm0, warm1 = info[0]["seen"][:48], info[1]["seen"][:48]
    assert warm0 == warm1
    seen0, seen1 = info[0]["seen"][48:], info[1]["seen"][48:]
    assert len(seen0) == len(seen1) == 24 and not set(seen0) & set(seen1)
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys()
    assert any(k.startswith("G.encoder.") for k in w0) and any(k.startswith("EMA.") for k in w0)
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=1e-6, rtol=0, msg=k)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    state = run / "checkpoints" / "state-0000000048"
    assert (state / "rng-0.safetensors").is_file() and (state / "rng-1.safetensors").is_file()
