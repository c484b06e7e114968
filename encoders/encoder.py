"""Spiking text encoders: TokenBatch -> spike train -> snntorch layers -> SpikeCode.

    token features [B, L, N] --sigmoid--> intensities --SpikeCoder--> spikes [T, B, N]
    --SpikingStack--> spikes, membranes [T, B, H] --readouts--> pooled [B, C], tokens [B, L, C]

The readouts see spike rates and membrane potentials (LayerNorm + Linear): sparse spike
counts alone make nearly equal codes for different prompts, the membrane keeps them apart.
  pooled = Readout([mean spikes, mean membrane(, final membrane)] over the real steps)
  tokens = Readout([mean spikes, mean membrane] over each token's window)
The final membrane holds mostly the last words and can dominate the pooled code; it is optional
(EncoderConfig.final_membrane says why and what it measured).
Only real (non-padding) steps enter readouts and stats, and padding sits after the last
token, so padding changes nothing. With EncoderConfig.spikes False (the dense ablation) the same
pipeline carries continuous values where the spikes were.
"""
from __future__ import annotations

import torch
from torch import nn

from .code import SpikeCode
from .coding import SpikeCoder
from .config import EncoderConfig
from .guides import GuideEncoder, check_guides
from .minilm import FEATURE_DIM, FrozenMiniLM, MiniLMTokenizer
from .spiking import SpikingStack, spike_stats
from .tokenizer import PAD_ID, TokenBatch, WordTokenizer


class Readout(nn.Module):
    """LayerNorm + Linear from spike/membrane statistics to the code width."""

    def __init__(self, *, in_features: int, out_features: int) -> None:  # widths in and out
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over every process (torch.distributed); its gradient is summed alike, so
    each process's inputs get the gradient of every process's loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class CodeNorm(nn.Module):
    """Standardises each feature of the pooled code across prompts: BatchNorm without the
    affine part, safe at batch 1.

    A readout averaged over a prompt's steps is dominated by what all prompts share: at
    initialisation two different shapes captions have pooled cosine 0.97 (measured on 256
    captions), so the mapping network and D's projection see almost one code and the
    condition is ignored. Standardised, the same codes have cosine ~0. Training batches of
    two or more prompts use (and track) batch statistics; eval mode and single prompts use
    the running statistics, so a trained model codes each prompt on its own.
    """

    def __init__(self, *, features: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()  # features: code width; momentum: running-statistics update rate
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        # Set by a multi-process training loop: batch statistics over every process's prompts, as
        # one process computes them over the whole batch (SyncBatchNorm's rule; not saved).
        self.synced = False

    def batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.synced:
            return x.mean(dim=0), x.var(dim=0, unbiased=False)
        count = SumOverProcesses.apply(torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device))
        mean = SumOverProcesses.apply(x.sum(dim=0)) / count
        return mean, SumOverProcesses.apply((x - mean).square().sum(dim=0)) / count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C] -> [B, C] with zero mean and unit variance per feature."""
        if self.training and (x.shape[0] > 1 or self.synced):
            mean, var = self.batch_statistics(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean.to(x.dtype)) * torch.rsqrt(var.to(x.dtype) + self.eps)


class SpikingTextEncoder(nn.Module):
    """Shared body of the three encoders; subclasses supply `token_features`."""

    def __init__(self, cfg: EncoderConfig, *, first_neuron: str = "leaky") -> None:  # neuron of layer 1
        super().__init__()
        self.cfg = cfg
        self.coder = SpikeCoder(coding=cfg.coding, steps_per_token=cfg.steps_per_token, seed=cfg.seed,
                                latency_sigma=cfg.latency_sigma, rate_noise=cfg.rate_noise, spikes=cfg.spikes)
        self.stack = SpikingStack(in_features=cfg.embed_dim, hidden=cfg.hidden, num_layers=cfg.num_layers,
                                  first_neuron=first_neuron, beta=cfg.beta, threshold=cfg.threshold,
                                  learn_beta=cfg.learn_beta, slstm_threshold=cfg.slstm_threshold, spikes=cfg.spikes)
        pooled_stats = 3 if cfg.final_membrane else 2
        self.pooled_head = Readout(in_features=pooled_stats * cfg.hidden, out_features=cfg.code_dim)
        self.token_head = Readout(in_features=2 * cfg.hidden, out_features=cfg.code_dim)
        self.code_norm = CodeNorm(features=cfg.code_dim) if cfg.code_norm else nn.Identity()
        self.guides = None
        if cfg.guide_tokens:  # on a forked RNG: the text path initialises as it does without guides
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, ())) + 1)  # a stream of its own, from the global seed
                self.guides = GuideEncoder(cfg)

    @property
    def code_dim(self) -> int:
        return self.cfg.code_dim

    def token_features(self, batch: TokenBatch) -> torch.Tensor:
        """batch -> [B, L, embed_dim] real-valued features (before the sigmoid)."""
        raise NotImplementedError

    def forward(self, batch: TokenBatch, *, generator: torch.Generator | None = None) -> SpikeCode:
        """Encode a batch. `generator` seeds rate coding (default: global RNG in training,
        frozen noise from cfg.seed in eval mode)."""
        return self.run(batch, generator=generator)[0]

    def run(self, batch: TokenBatch, *, generator: torch.Generator | None = None, stepwise: bool = False
            ) -> tuple[SpikeCode, dict[str, torch.Tensor]]:
        """Encode and also return the spike trains {"input": [T,B,N], "layer1": [T,B,H], ...}.
        stepwise=True steps every snntorch neuron through time (the slow reference path)."""
        mask = batch.mask
        B, L = mask.shape
        K = self.cfg.steps_per_token
        lengths = mask.sum(dim=1)  # [B]
        positions = torch.arange(L, device=mask.device)
        if not torch.equal(mask, positions < lengths[:, None]):
            raise ValueError("TokenBatch.mask must be a prefix per row (tokens left-aligned, padding after)")

        p = torch.sigmoid(self.token_features(batch))  # [B, L, N]
        weights = batch.weights.to(p.dtype)
        spikes_in = self.coder(p, weights, mask, generator)  # [T, B, N]
        layer_spikes, mem = self.stack(spikes_in, stepwise=stepwise)  # list of [T, B, H]; [T, B, H]
        spk = layer_spikes[-1]
        T, H = L * K, self.cfg.hidden
        assert spk.shape == mem.shape == (T, B, H), (spk.shape, mem.shape)

        step_mask = mask.repeat_interleave(K, dim=1).T  # [T, B], True on real steps
        m = step_mask.unsqueeze(-1).to(mem.dtype)  # [T, B, 1]
        n_steps = step_mask.sum(dim=0).clamp(min=1).unsqueeze(-1).to(mem.dtype)  # [B, 1]
        pooled_parts = [(spk * m).sum(0) / n_steps, (mem * m).sum(0) / n_steps]
        if self.cfg.final_membrane:
            last = (lengths * K - 1).clamp(min=0)  # [B] index of each prompt's last real step
            pooled_parts.append(mem[last, torch.arange(B, device=mem.device)] * (lengths > 0).unsqueeze(-1))  # [B, H]
        pooled_in = torch.cat(pooled_parts, dim=-1)
        pooled = self.code_norm(self.pooled_head(pooled_in))  # [B, C]

        windows = torch.cat([spk.view(L, K, B, H).mean(dim=1), mem.view(L, K, B, H).mean(dim=1)], dim=-1)  # [L, B, 2H]
        tokens = self.token_head(windows.transpose(0, 1)) * mask.unsqueeze(-1)  # [B, L, C]

        stats = spike_stats(self.stack, spikes_in, layer_spikes, step_mask)
        trains = {"input": spikes_in, **{f"layer{i + 1}": s for i, s in enumerate(layer_spikes)}}
        if self.guides is not None:
            tokens, mask, pooled = self.join_guides(batch, tokens, mask, pooled, generator)
        else:
            check_guides(self.cfg, batch.guides)  # refuses guides a model without them is given
        return SpikeCode(pooled, tokens, mask, stats), trains

    def join_guides(self, batch: TokenBatch, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The caption's tokens [B, L, C] padded to max_length, then the guide tokens [B, S, C]; the
        pooled code [B, C] plus the guides' addition. Returns (tokens, mask, pooled)."""
        B, L, C = tokens.shape
        M = self.cfg.max_length
        assert L <= M, (L, M)
        g_tokens, g_mask, g_pooled = self.guides(batch.guides, B, tokens.device, generator)
        tokens = torch.cat([tokens, tokens.new_zeros(B, M - L, C), g_tokens.to(tokens.dtype)], dim=1)  # [B, M + S, C]
        mask = torch.cat([mask, mask.new_zeros(B, M - L), g_mask], dim=1)
        return tokens, mask, pooled + g_pooled.to(pooled.dtype)

    def resize_vocab(self, new_size: int) -> None:
        raise NotImplementedError


class EmbeddingEncoder(SpikingTextEncoder):
    """Learned word embeddings -> spike coding -> spiking MLP of snn.Leaky layers."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int, *, first_neuron: str = "leaky") -> None:
        super().__init__(cfg, first_neuron=first_neuron)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=PAD_ID)

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    def token_features(self, batch: TokenBatch) -> torch.Tensor:
        top = int(batch.ids.max()) if batch.ids.numel() else 0
        if top >= self.vocab_size:
            raise ValueError(f"token id {top} >= encoder vocabulary {self.vocab_size}: the tokenizer grew; "
                             f"call encoder.resize_vocab(len(tokenizer)) first")
        return self.embed(batch.ids)  # [B, L, N]

    def resize_vocab(self, new_size: int) -> None:
        """Grow (or keep) the embedding table to `new_size` rows; old rows keep their values."""
        old = self.embed
        if new_size < old.num_embeddings:
            raise ValueError(f"resize_vocab({new_size}) would drop rows of a {old.num_embeddings}-word vocabulary")
        if new_size == old.num_embeddings:
            return
        new = nn.Embedding(new_size, old.embedding_dim, padding_idx=PAD_ID,
                           device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
        self.embed = new


class RecurrentEncoder(EmbeddingEncoder):
    """Learned word embeddings -> spike coding -> a recurrent spiking layer (snn.RLeaky or
    snn.SLSTM), then snn.Leaky layers."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int) -> None:
        super().__init__(cfg, vocab_size, first_neuron=cfg.recurrent_cell)


class TransformerEncoder(SpikingTextEncoder):
    """Frozen all-MiniLM-L6-v2 token features -> LayerNorm + Linear -> spike coding -> spiking
    MLP of snn.Leaky layers. Only the projection, spiking layers and readouts train; the
    backbone is loaded lazily from the package and is not in the state_dict."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int | None = None) -> None:
        super().__init__(cfg)
        self.project = nn.Sequential(nn.LayerNorm(FEATURE_DIM), nn.Linear(FEATURE_DIM, cfg.embed_dim))
        self.backbone = FrozenMiniLM(cache_size=cfg.feature_cache)
        self._vocab_size = vocab_size

    def token_features(self, batch: TokenBatch) -> torch.Tensor:
        device = self.project[1].weight.device
        feats = self.backbone(batch, device).to(self.project[1].weight.dtype)  # [B, L, 384]
        return self.project(feats)  # [B, L, N]

    def resize_vocab(self, new_size: int) -> None:
        """MiniLM's WordPiece vocabulary is fixed; only its own size is accepted."""
        if self._vocab_size is not None and new_size != self._vocab_size:
            raise ValueError(f"the transformer encoder's vocabulary is MiniLM's ({self._vocab_size}); got {new_size}")


def build_encoder(cfg: EncoderConfig, vocab_size: int) -> SpikingTextEncoder:
    """The encoder `cfg.kind` names, for a tokenizer of `vocab_size` entries."""
    if cfg.kind == "embedding":
        return EmbeddingEncoder(cfg, vocab_size)
    if cfg.kind == "recurrent":
        return RecurrentEncoder(cfg, vocab_size)
    if cfg.kind == "transformer":
        return TransformerEncoder(cfg, vocab_size)
    raise ValueError(f"EncoderConfig.kind={cfg.kind!r}: expected embedding, recurrent or transformer")


def make_tokenizer(cfg: EncoderConfig, captions=()) -> WordTokenizer | MiniLMTokenizer:
    """The tokenizer `cfg.kind` needs: words built from `captions`, or MiniLM's WordPiece."""
    if cfg.kind == "transformer":
        return MiniLMTokenizer(max_length=cfg.max_length)
    return WordTokenizer.build(captions, min_freq=cfg.min_freq, max_length=cfg.max_length)
