"""Spiking layers on snntorch with explicit, forward-local state.

Each layer is a synapse (nn.Linear, applied to all T steps at once) followed by a neuron
population (snntorch Leaky, RLeaky or SLSTM). The state starts at zero in every forward
and is passed explicitly (init_hidden=False); after a step loop the neuron's cached state
is cleared, so nothing leaks between calls and the module stays deep-copyable (an EMA copy)
without graph-holding tensors.

snn.Leaky's reset is detached, so its membrane is a linear filter of the input current
given the reset sequence. `LeakyIntegrate` runs that recurrence in a graph-free loop and
its adjoint in backward; spikes then come from snn.Leaky's own `fire` (its surrogate
gradient) on all steps at once. Values and gradients equal stepping snn.Leaky
(tests/test_spike_coding.py checks both), at a fraction of the autograd overhead.
`RecurrentLeakyIntegrate` does the same for snn.RLeaky (all-to-all recurrent weights): the
forward loop runs without a graph and backward runs the adjoint recurrence, with the
neuron's own surrogate derivative. SLSTM is stepped through snntorch.

The dense ablation (spikes=False, EncoderConfig.spikes) keeps every layer, width and state
equation and replaces the Heaviside step, wherever a neuron fires or resets, by `smooth_spike`:
the smooth step whose derivative is the atan surrogate gradient the spiking neurons train with.
The neurons are snntorch's own, built with it as their `spike_grad`, so stepping them gives the
dense reference, and the fast paths run the same recurrences with a continuous reset.
"""
from __future__ import annotations

import math

import snntorch as snn
import torch
from torch import nn

NEURONS = ("leaky", "rleaky", "slstm")
# Synapses start at 2x PyTorch's default Linear init: with it every layer of a fresh encoder
# fires at roughly 5-20 % per step (at 1x the second layer fires under 2 %, its gradients starve).
SYNAPSE_INIT_GAIN = 2.0
SURROGATE_ALPHA = 2.0  # slope of snntorch's default atan surrogate, which every spiking neuron here uses


def smooth_spike(x: torch.Tensor) -> torch.Tensor:
    """The dense ablation's firing function of x = mem - threshold: 1/2 + arctan(pi alpha x / 2) / pi,
    in (0, 1), 1/2 at threshold. Its derivative is snntorch's atan surrogate (alpha = 2)."""
    return 0.5 + torch.atan((math.pi * SURROGATE_ALPHA / 2) * x) / math.pi


def fire_into(out: torch.Tensor, mem: torch.Tensor, threshold: float, smooth: bool) -> torch.Tensor:
    """out <- H(mem - threshold) (1.0 where mem > threshold), or smooth_spike(mem - threshold)
    when smooth; returns out. In place: the integrators' step loops allocate nothing."""
    if smooth:
        return out.copy_(smooth_spike(mem - threshold))
    return torch.gt(mem, threshold, out=out)


def clear_state(cell: nn.Module) -> None:
    """Drop the state snntorch caches on the neuron module during a step loop (buffers
    "mem"/"spk"/"syn", plain attributes "spk"/"reset"), so no graph outlives the call."""
    for name in ("mem", "spk", "syn", "reset"):
        if name in cell._buffers:
            cell._buffers[name] = torch.zeros(0, device=cell._buffers[name].device)
        elif isinstance(cell.__dict__.get(name), torch.Tensor):
            cell.__dict__[name] = torch.zeros(0, device=cell.__dict__[name].device)


class LeakyIntegrate(torch.autograd.Function):
    """snn.Leaky membrane with reset by subtraction, over a whole train:

        mem[t] = beta * mem[t-1] + cur[t] - threshold * H(mem[t-1] - threshold),  mem[-1] = 0

    cur [T, B, H]; beta a tensor broadcastable to [B, H] (already clamped to [0, 1]).
    smooth=True: smooth_spike in place of the step H (the dense ablation).
    The reset is treated as a constant in backward, as in snntorch (it is detached there).
    """

    @staticmethod
    def forward(ctx, cur: torch.Tensor, beta: torch.Tensor, threshold: float, smooth: bool = False) -> torch.Tensor:
        mem = torch.empty_like(cur)
        prev = torch.zeros_like(cur[0])
        reset = torch.empty_like(cur[0])
        for t in range(cur.shape[0]):
            # snn.Leaky's operations in its order (beta * mem + input - reset * threshold),
            # written in place: bit-equal results without per-step allocations.
            fire_into(reset, prev, threshold, smooth)  # 1.0 where the previous step fired
            torch.mul(prev, beta, out=mem[t])
            prev = mem[t].add_(cur[t]).sub_(reset, alpha=threshold)
        ctx.save_for_backward(mem, beta)
        return mem

    @staticmethod
    def backward(ctx, grad_mem: torch.Tensor):
        mem, beta = ctx.saved_tensors
        grad_cur = torch.empty_like(grad_mem)  # adjoint: a[t] = grad_mem[t] + beta * a[t+1]
        grad_cur[-1] = grad_mem[-1]
        for t in range(grad_mem.shape[0] - 2, -1, -1):
            torch.mul(grad_cur[t + 1], beta, out=grad_cur[t]).add_(grad_mem[t])
        grad_beta = None
        if ctx.needs_input_grad[1]:
            prev = torch.cat([torch.zeros_like(mem[:1]), mem[:-1]])  # mem[t-1]
            g = grad_cur * prev  # [T, B, H]
            grad_beta = g.sum() if beta.numel() == 1 else g.sum(dim=(0, 1))
            grad_beta = grad_beta.reshape(beta.shape)
        return grad_cur, grad_beta, None, None


def surrogate_derivative(spike_grad, x: torch.Tensor) -> torch.Tensor:
    """d spike / d x of a snntorch surrogate (e.g. surrogate.atan()) at x = mem - threshold."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(spike_grad(x).sum(), x)
    return d


class RecurrentLeakyIntegrate(torch.autograd.Function):
    """snn.RLeaky (all_to_all, reset by subtraction) over a whole train:

        reset[t] = H(mem[t-1] - thr)                     (detached, as in snntorch)
        mem[t]   = beta * mem[t-1] + cur[t] + W spk[t-1] + b - thr * reset[t]
        spk[t]   = H(mem[t] - thr)                       (surrogate gradient in backward)

    with mem[-1] = spk[-1] = 0. cur [T, B, H]; weight [H, H], bias [H] of the recurrent
    nn.Linear. Returns (spk, mem), each [T, B, H]. smooth=True: smooth_spike in place of H in
    the reset and the firing (the dense ablation; `spike_grad` is then smooth_spike itself).
    """

    @staticmethod
    def forward(ctx, cur, weight, bias, beta, threshold: float, spike_grad, smooth: bool = False):
        mem, spk = torch.empty_like(cur), torch.empty_like(cur)
        prev_mem, prev_spk = torch.zeros_like(cur[0]), torch.zeros_like(cur[0])
        reset = torch.empty_like(cur[0])
        for t in range(cur.shape[0]):
            # snn.RLeaky's order: beta * mem + input + recurrent(spk) - reset * threshold.
            fire_into(reset, prev_mem, threshold, smooth)
            torch.mul(prev_mem, beta, out=mem[t])
            prev_mem = mem[t].add_(cur[t]).add_(nn.functional.linear(prev_spk, weight, bias)).sub_(reset, alpha=threshold)
            prev_spk = fire_into(spk[t], prev_mem, threshold, smooth)
        ctx.save_for_backward(mem, spk, weight, beta)
        ctx.threshold, ctx.spike_grad = threshold, spike_grad
        return spk, mem

    @staticmethod
    def backward(ctx, grad_spk, grad_mem):
        mem, spk, weight, beta = ctx.saved_tensors
        grad_spk = torch.zeros_like(mem) if grad_spk is None else grad_spk
        grad_mem = torch.zeros_like(mem) if grad_mem is None else grad_mem
        slope = surrogate_derivative(ctx.spike_grad, mem - ctx.threshold)  # [T, B, H]
        grad_cur = torch.empty_like(mem)  # = dL/dmem[t], all paths
        nxt = torch.zeros_like(mem[0])
        for t in range(mem.shape[0] - 1, -1, -1):
            g_spk = grad_spk[t] + nxt @ weight  # output, and the recurrent input of step t+1
            nxt = torch.add(grad_mem[t], beta * nxt, out=grad_cur[t]).addcmul_(slope[t], g_spk)
        grad_weight = torch.einsum("tbi,tbj->ij", grad_cur[1:], spk[:-1])
        grad_bias = grad_cur.sum(dim=(0, 1))
        grad_beta = None
        if ctx.needs_input_grad[3]:
            g = grad_cur[1:] * mem[:-1]
            grad_beta = (g.sum() if beta.numel() == 1 else g.sum(dim=(0, 1))).reshape(beta.shape)
        return grad_cur, grad_weight, grad_bias, grad_beta, None, None, None


class SpikingLayer(nn.Module):
    """Linear synapses + a spiking neuron population, run over a whole spike train."""

    def __init__(
        self,
        *,
        in_features: int,  # input channels (spikes of the layer below)
        out_features: int,  # neurons
        neuron: str = "leaky",  # "leaky" (snn.Leaky), "rleaky" (snn.RLeaky, all-to-all), "slstm" (snn.SLSTM)
        beta: float = 0.9,  # membrane decay per step (leaky/rleaky)
        threshold: float = 1.0,  # firing threshold
        learn_beta: bool = False,  # train beta (leaky/rleaky)
        slstm_threshold: float = 0.2,  # firing threshold of an SLSTM (its h stays in (-1, 1))
        spikes: bool = True,  # False: smooth_spike in place of the spikes (the dense ablation)
    ) -> None:
        super().__init__()
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
        self.neuron, self.spikes = neuron, spikes
        spike_grad = None if spikes else smooth_spike  # None: snntorch's atan surrogate
        self.in_features, self.out_features = in_features, out_features
        self.fc = nn.Linear(in_features, out_features)
        with torch.no_grad():
            self.fc.weight.mul_(SYNAPSE_INIT_GAIN)
        if neuron == "leaky":
            self.cell = snn.Leaky(beta=beta, threshold=threshold, learn_beta=learn_beta, init_hidden=False,
                                  spike_grad=spike_grad)
        elif neuron == "rleaky":
            self.cell = snn.RLeaky(beta=beta, threshold=threshold, learn_beta=learn_beta, all_to_all=True,
                                   linear_features=out_features, init_hidden=False, spike_grad=spike_grad)
        else:
            # SLSTM's input is the fc current (width out_features): snntorch 1.0 re-zeroes the
            # state whenever input width != hidden width, so the widths must match.
            self.cell = snn.SLSTM(out_features, out_features, threshold=slstm_threshold, init_hidden=False,
                                  spike_grad=spike_grad)

    def forward(self, x: torch.Tensor, *, stepwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, B, in] spikes -> (spikes [T, B, out], membrane [T, B, out]).

        stepwise=True steps snn.Leaky / snn.RLeaky through time (the reference the fast paths match).
        """
        current = self.fc(x)  # [T, B, out], every step in one matmul
        if stepwise or self.neuron == "slstm":
            return self.step_through(current)
        # Membranes integrate over T steps: keep them in float32 even under autocast.
        current = current.float()
        beta = self.cell.beta.clamp(0, 1).float()
        threshold = float(self.cell.threshold)
        with torch.autocast(current.device.type, enabled=False):
            if self.neuron == "leaky":
                mem = LeakyIntegrate.apply(current, beta, threshold, not self.spikes)
                return self.cell.fire(mem).float(), mem
            rec = self.cell.recurrent
            return RecurrentLeakyIntegrate.apply(current, rec.weight.float(), rec.bias.float(), beta, threshold,
                                                 self.cell.spike_grad, not self.spikes)

    def step_through(self, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step the snntorch neuron through current [T, B, out]; state local to this call."""
        T, B, _ = current.shape
        zeros = current.new_zeros(B, self.out_features)
        spikes, mems = [], []
        try:
            if self.neuron == "leaky":
                mem = zeros
                for cur in current.unbind(0):
                    spk, mem = self.cell(cur, mem)
                    spikes.append(spk)
                    mems.append(mem)
            elif self.neuron == "rleaky":
                spk, mem = zeros, zeros
                for cur in current.unbind(0):
                    spk, mem = self.cell(cur, spk, mem)
                    spikes.append(spk)
                    mems.append(mem)
            else:
                syn, mem = zeros, zeros
                for cur in current.unbind(0):
                    spk, syn, mem = self.cell(cur, syn, mem)
                    spikes.append(spk)
                    mems.append(mem)
        finally:
            clear_state(self.cell)
        return torch.stack(spikes), torch.stack(mems)  # [T, B, out] each

    # Operation counts for energy estimates (per time step).
    @property
    def fan_out(self) -> int:
        """Synapses each input spike drives."""
        return self.out_features

    @property
    def recurrent_fan_out(self) -> int:
        """Synapses each of this layer's own spikes drives back into it (RLeaky all-to-all)."""
        return self.out_features if self.neuron == "rleaky" else 0

    @property
    def dense_macs_per_step(self) -> int:
        """MACs that run every step regardless of spikes (the SLSTM gates)."""
        return 8 * self.out_features**2 if self.neuron == "slstm" else 0

    @property
    def dense_equivalent_per_step(self) -> int:
        """MACs per step of a dense (non-spiking) network of the same shape."""
        rec = self.out_features**2 if self.neuron == "rleaky" else 0
        return self.in_features * self.out_features + rec + self.dense_macs_per_step


class SpikingStack(nn.Module):
    """Spiking layers one after another; the first may be recurrent."""

    def __init__(
        self,
        *,
        in_features: int,  # input spike channels N
        hidden: int,  # neurons per layer
        num_layers: int,  # layers
        first_neuron: str = "leaky",  # neuron of the first layer; the others are snn.Leaky
        beta: float = 0.9,  # membrane decay per step
        threshold: float = 1.0,  # firing threshold
        learn_beta: bool = False,  # train beta
        slstm_threshold: float = 0.2,  # firing threshold of an SLSTM first layer
        spikes: bool = True,  # False: the dense ablation (smooth_spike in place of spikes)
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SpikingLayer(in_features=in_features if i == 0 else hidden, out_features=hidden,
                         neuron=first_neuron if i == 0 else "leaky", beta=beta, threshold=threshold,
                         learn_beta=learn_beta, slstm_threshold=slstm_threshold, spikes=spikes)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor, *, stepwise: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x [T, B, N] -> (spikes of every layer, each [T, B, H]; last membrane [T, B, H])."""
        spikes = []
        for layer in self.layers:
            x, mem = layer(x, stepwise=stepwise)
            spikes.append(x)
        return spikes, mem


def spike_stats(stack: SpikingStack, input_spikes: torch.Tensor, layer_spikes: list[torch.Tensor],
                step_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spike counts and synaptic operations over the real (non-padding) steps.

    input_spikes [T, B, N], layer_spikes list of [T, B, H], step_mask [T, B] bool.
    Returns "spikes" [B] (input + hidden spike events), "firing_rate" [] (hidden spikes per
    neuron per real step), "synops" [B] (each spike x the synapses it drives, plus any
    always-on MACs) and "dense_macs" [] (per prompt, mean over the batch, for a dense
    network of the same shape over the same steps). In the dense ablation every non-zero value
    counts as an event, so synops come out at the dense count (the values are not spikes).
    """
    with torch.no_grad():
        m = step_mask.unsqueeze(-1)  # [T, B, 1]
        counts = [((s != 0) & m).sum(dim=(0, 2)).float() for s in [input_spikes, *layer_spikes]]  # each [B]
        steps = step_mask.sum(dim=0).float()  # [B] real steps per prompt
        synops = torch.zeros_like(steps)
        for i, layer in enumerate(stack.layers):
            synops += counts[i] * layer.fan_out + counts[i + 1] * layer.recurrent_fan_out
            synops += steps * layer.dense_macs_per_step
        hidden_spikes = torch.stack(counts[1:]).sum(0)  # [B]
        neurons = sum(layer.out_features for layer in stack.layers)
        dense = sum(layer.dense_equivalent_per_step for layer in stack.layers)
        return {
            "spikes": counts[0] + hidden_spikes,
            "firing_rate": hidden_spikes.sum() / (neurons * steps.sum()).clamp(min=1),
            "synops": synops,
            "dense_macs": steps.mean() * dense,
        }
