"""The `energy` metric: what the text encoder's spikes cost against the same layers run dense,
beside the generator's and discriminator's FLOPs per image.

From one forward pass of the encoder over the eval prompts (each distinct prompt once), per prompt:
  energy_firing_rate     hidden spikes per neuron per real time step
  energy_spikes          spike events (the input coding's and the hidden layers')
  energy_synops          synaptic operations: each spike x the synapses it drives (+ the
                         always-on MACs of an SLSTM's gates), encoders.spiking.spike_stats
  energy_dense_macs      MACs of the same spiking layers run dense over the same steps
  energy_layers_pj       the spiking layers' energy: synops x PJ_PER_SYNOP (for the dense
                         ablation, EncoderConfig.spikes False: dense MACs x PJ_PER_MAC)
  energy_dense_pj        dense MACs x PJ_PER_MAC
  energy_ratio           energy_layers_pj / energy_dense_pj
  energy_pj_per_synop, energy_pj_per_mac, energy_source   the figures used and their source
  energy_spiking         1 for a spiking encoder, 0 for the dense ablation
  energy_encoder_flops   FLOPs of the whole encoder as software runs it (every synapse dense,
                         the readouts, and for the transformer kind the frozen MiniLM)
and per image:
  energy_g_flops, energy_d_flops   the generator's and a discriminator's forward FLOPs
  energy_encoder_share   encoder FLOPs / (encoder + generator FLOPs)
FLOPs are torch.utils.flop_counter's (2 per multiply-accumulate; matmuls, convolutions, attention).
A synaptic operation is an accumulate only for spikes of height 1; an emphasised word's spikes
are taller and would need a multiply too (the reference captions carry no emphasis).
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from encoders.tokenizer import cuts_reported
from eval.metrics import Context, register

PJ_PER_SYNOP = 0.9  # 32-bit float add, 45 nm
PJ_PER_MAC = 4.6  # 32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm
SOURCE = "Horowitz, ISSCC 2014 (45 nm): 0.9 pJ per add, 4.6 pJ per mult+add"
FLOP_PROMPTS = 8  # prompts whose images G and D are counted on


class _NoModuleTracker:
    """Stands in for FlopCounterMode's module tracker, whose hooks fail on nn.MultiheadAttention
    (G's layout map) with "Expected gradient function to be set": all counts go to "Global"."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU's fused attention kernel, counted as the GPU ones are (the counter knows only those)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch.utils.flop_counter counts while fn() runs (no per-module breakdown).

    Gradients stay enabled: without them nn.MultiheadAttention takes a fused fast path that
    the counter does not see (it would count 0)."""
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops})
    counter.mod_tracker = _NoModuleTracker()
    with torch.enable_grad(), counter:
        fn()
    return counter.get_total_flops()


def layer_energy(synops: float, dense_macs: float, *, spiking: bool) -> dict[str, float]:
    """Per-prompt energy in pJ of the spiking layers and of the same layers run dense."""
    layers = synops * PJ_PER_SYNOP if spiking else dense_macs * PJ_PER_MAC
    dense = dense_macs * PJ_PER_MAC
    return {"energy_layers_pj": layers, "energy_dense_pj": dense, "energy_ratio": layers / dense if dense else 0.0}


@torch.no_grad()
def encoder_energy(encoder, tokenizer, prompts: list[str], *, batch: int, device, emphasis: bool) -> dict[str, float]:
    """Spike and operation counts per prompt of one pass of `encoder` (eval mode) over `prompts`,
    and its FLOPs. Runs a copy, so a transformer's feature cache starts empty and MiniLM is counted."""
    if not prompts:
        raise ValueError("energy: no prompts")
    enc = copy.deepcopy(encoder).eval()
    totals = {"spikes": 0.0, "synops": 0.0, "dense_macs": 0.0, "rate_x_steps": 0.0, "steps": 0.0}

    def run() -> None:
        for lo in range(0, len(prompts), batch):
            tokens = tokenizer(prompts[lo : lo + batch], emphasis=emphasis).to(device)
            stats = enc(tokens).stats
            b, steps = len(tokens.ids), float(tokens.mask.sum()) * enc.cfg.steps_per_token
            totals["spikes"] += float(stats["spikes"].sum())
            totals["synops"] += float(stats["synops"].sum())
            totals["dense_macs"] += float(stats["dense_macs"]) * b  # per prompt, mean over the batch
            totals["rate_x_steps"] += float(stats["firing_rate"]) * steps  # rate per neuron-step: weigh by steps
            totals["steps"] += steps

    with nullcontext() if emphasis else cuts_reported():  # captions: their cuts are reported by the main pass
        flops = count_flops(run)
    n = len(prompts)
    return {"energy_firing_rate": totals["rate_x_steps"] / max(totals["steps"], 1.0),
            "energy_spikes": totals["spikes"] / n, "energy_synops": totals["synops"] / n,
            "energy_dense_macs": totals["dense_macs"] / n, "energy_encoder_flops": flops / n}


@torch.no_grad()
def network_flops(model, tokenizer, prompts: list[str], *, device, emphasis: bool) -> dict[str, float]:
    """Forward FLOPs per image of the generator and of a discriminator built from the model's
    config (its weights do not change the count), on `prompts` (one image each)."""
    from gan.discriminator import Discriminator
    from gan.pipeline import seed_latents

    with nullcontext() if emphasis else cuts_reported():
        code = model.encoder(tokenizer(prompts, emphasis=emphasis).to(device))
    z = seed_latents(range(len(prompts)), int(model.generator.z_dim)).to(device)
    images = model.generator(z, code, noise_mode="const")
    D = Discriminator(model.cfg.discriminator).to(device).eval()
    g = count_flops(lambda: model.generator(z, code, noise_mode="const"))
    d = count_flops(lambda: D(images, code.pooled, tokens=code.tokens, mask=code.mask))
    return {"energy_g_flops": g / len(prompts), "energy_d_flops": d / len(prompts)}


def measure_energy(model, tokenizer, prompts: list[str], *, batch: int, device, emphasis: bool) -> dict:
    """Every energy figure (module docstring) of `model` on `prompts`."""
    prompts = list(dict.fromkeys(prompts))
    spiking = bool(model.encoder.cfg.spikes)
    out: dict[str, float | int | str] = encoder_energy(model.encoder, tokenizer, prompts, batch=batch, device=device,
                                                       emphasis=emphasis)
    out.update(layer_energy(out["energy_synops"], out["energy_dense_macs"], spiking=spiking))
    out.update({"energy_pj_per_synop": PJ_PER_SYNOP, "energy_pj_per_mac": PJ_PER_MAC, "energy_source": SOURCE,
                "energy_spiking": int(spiking)})
    out.update(network_flops(model, tokenizer, prompts[:FLOP_PROMPTS], device=device, emphasis=emphasis))
    out["energy_encoder_share"] = out["energy_encoder_flops"] / (out["energy_encoder_flops"] + out["energy_g_flops"])
    return out


@register("energy")
def energy(ctx: Context) -> dict:
    """Firing rate, synaptic ops vs dense MACs of the text encoder (pJ, Horowitz 2014), G and D FLOPs."""
    return measure_energy(ctx.model, ctx.tokenizer, ctx.prompts(), batch=ctx.opts.batch, device=ctx.opts.device,
                          emphasis=ctx.emphasis)
