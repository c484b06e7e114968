"""The `energy` metric: what the text encoder's spikes cost against the same layers run dense,
beside the generator's and discriminator's FLOPs per image.

From one forward pass of the encoder over the eval prompts (each distinct prompt once, one at a
time, so no padding is counted), per prompt:
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
  energy_other_macs      MACs outside the spiking layers (token features, readouts, MiniLM):
                         energy_encoder_flops / 2 - energy_dense_macs, dense in either encoder
  energy_encoder_pj      the whole encoder: energy_layers_pj + energy_other_macs x PJ_PER_MAC
  energy_encoder_dense_pj  the whole encoder run dense: (dense + other MACs) x PJ_PER_MAC
  energy_encoder_ratio   energy_encoder_pj / energy_encoder_dense_pj
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


def layer_energy(synops: float, dense_macs: float, other_macs: float, *, spiking: bool) -> dict[str, float]:
    """Per-prompt energy in pJ of the spiking layers and of the whole encoder, each beside the
    same run dense. other_macs: the encoder's MACs outside the spiking layers."""
    layers = synops * PJ_PER_SYNOP if spiking else dense_macs * PJ_PER_MAC
    dense = dense_macs * PJ_PER_MAC
    other = other_macs * PJ_PER_MAC
    return {"energy_layers_pj": layers, "energy_dense_pj": dense, "energy_ratio": layers / dense if dense else 0.0,
            "energy_encoder_pj": layers + other, "energy_encoder_dense_pj": dense + other,
            "energy_encoder_ratio": (layers + other) / (dense + other) if dense + other else 0.0}


@torch.no_grad()
def encoder_energy(encoder, tokenizer, prompts: list[str], *, device, emphasis: bool) -> dict[str, float]:
    """Spike and operation counts per prompt of one pass of `encoder` (eval mode) over `prompts`,
    one prompt at a time, and its FLOPs. Runs a copy, so a transformer's feature cache starts
    empty and MiniLM is counted."""
    if not prompts:
        raise ValueError("energy: no prompts")
    enc = copy.deepcopy(encoder).eval()
    totals = {"spikes": 0.0, "synops": 0.0, "dense_macs": 0.0, "hidden_spikes": 0.0, "neuron_steps": 0.0}
    neurons = sum(layer.out_features for layer in enc.stack.layers)

    def run() -> None:
        for prompt in prompts:
            tokens = tokenizer([prompt], emphasis=emphasis).to(device)
            stats = enc(tokens).stats  # one prompt: every stat is that prompt's
            neuron_steps = neurons * float(tokens.mask.sum()) * enc.cfg.steps_per_token
            for key in ("spikes", "synops", "dense_macs"):
                totals[key] += float(stats[key].sum())
            totals["hidden_spikes"] += float(stats["firing_rate"]) * neuron_steps
            totals["neuron_steps"] += neuron_steps

    with nullcontext() if emphasis else cuts_reported():  # captions: their cuts are reported by the main pass
        flops = count_flops(run)
    n = len(prompts)
    return {"energy_firing_rate": totals["hidden_spikes"] / max(totals["neuron_steps"], 1.0),
            "energy_spikes": totals["spikes"] / n, "energy_synops": totals["synops"] / n,
            "energy_dense_macs": totals["dense_macs"] / n, "energy_encoder_flops": flops / n,
            "energy_other_macs": flops / 2 / n - totals["dense_macs"] / n}


@torch.no_grad()
def network_flops(model, tokenizer, prompts: list[str], *, device, emphasis: bool) -> dict[str, float]:
    """Forward FLOPs per image of the generator and of a discriminator built from the model's
    config (its weights do not change the count), on `prompts` (one image each)."""
    from gan.discriminator import build_discriminator
    from gan.pipeline import seed_latents

    with nullcontext() if emphasis else cuts_reported():
        code = model.encoder(tokenizer(prompts, emphasis=emphasis).to(device))
    z = seed_latents(range(len(prompts)), int(model.generator.z_dim)).to(device)
    images = model.generator(z, code, noise_mode="const")
    D = build_discriminator(model.cfg).to(device).eval()
    g = count_flops(lambda: model.generator(z, code, noise_mode="const"))
    d = count_flops(lambda: D(images, code.pooled))
    return {"energy_g_flops": g / len(prompts), "energy_d_flops": d / len(prompts)}


def measure_energy(model, tokenizer, prompts: list[str], *, device, emphasis: bool) -> dict:
    """Every energy figure (module docstring) of `model` on `prompts`."""
    prompts = list(dict.fromkeys(prompts))
    spiking = bool(model.encoder.cfg.spikes)
    out: dict[str, float | int | str] = encoder_energy(model.encoder, tokenizer, prompts, device=device,
                                                       emphasis=emphasis)
    out.update(layer_energy(out["energy_synops"], out["energy_dense_macs"], out["energy_other_macs"], spiking=spiking))
    out.update({"energy_pj_per_synop": PJ_PER_SYNOP, "energy_pj_per_mac": PJ_PER_MAC, "energy_source": SOURCE,
                "energy_spiking": int(spiking)})
    out.update(network_flops(model, tokenizer, prompts[:FLOP_PROMPTS], device=device, emphasis=emphasis))
    out["energy_encoder_share"] = out["energy_encoder_flops"] / (out["energy_encoder_flops"] + out["energy_g_flops"])
    return out


@register("energy", images=False)
def energy(ctx: Context) -> dict:
    """Firing rate, synaptic ops vs dense MACs of the text encoder (pJ, Horowitz 2014), G and D FLOPs."""
    return measure_energy(ctx.model, ctx.tokenizer, ctx.prompts(), device=ctx.opts.device, emphasis=ctx.emphasis)
