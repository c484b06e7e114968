"""EncoderConfig: every hyper-parameter of a spiking text encoder and its tokenizer."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KINDS = ("embedding", "recurrent", "transformer")
CODINGS = ("rate", "latency")
RATE_NOISES = ("fresh", "frozen")
RECURRENT_CELLS = ("rleaky", "slstm")
MAX_COLOURS = 5  # palette slots of a guided encoder (encoders/guides.py)


@dataclass
class EncoderConfig:
    """Spiking text encoder. T = steps_per_token x tokens time steps per prompt."""

    kind: str = "embedding"  # "embedding" (Leaky MLP), "recurrent" (RLeaky/SLSTM), "transformer" (frozen MiniLM)
    code_dim: int = 256  # C: width of SpikeCode.pooled and SpikeCode.tokens
    embed_dim: int = 64  # N: token feature width, i.e. number of input spike channels
    hidden: int = 128  # neurons per spiking layer
    num_layers: int = 2  # spiking layers (recurrent: the first is the recurrent one)
    steps_per_token: int = 4  # time steps in each token's window
    coding: str = "rate"  # "rate" (Bernoulli) or "latency" (one spike, larger value fires earlier)
    rate_noise: str = "fresh"  # rate coding in training: "fresh" Bernoulli noise each step, or "frozen" (eval's draw)
    beta: float = 0.9  # membrane decay per step
    threshold: float = 1.0  # firing threshold
    learn_beta: bool = False  # train the decay too
    recurrent_cell: str = "rleaky"  # recurrent kind only: "rleaky" or "slstm"
    slstm_threshold: float = 0.2  # SLSTM firing threshold: its h = o * tanh(c) stays well below 1
    latency_sigma: float = 1.0  # latency surrogate: width (steps) of the soft spike used for gradients
    max_length: int = 16  # tokens per prompt (word tokens, or WordPiece tokens for transformer)
    min_freq: int = 1  # word tokenizer: occurrences a word needs to enter the vocabulary
    seed: int = 0  # frozen rate-coding noise in eval mode (deterministic codes)
    code_norm: bool = True  # standardise each pooled-code feature across prompts (CodeNorm)
    # The pooled readout also reads the membrane at the prompt's last step (docs/experiments.md).
    final_membrane: bool = True
    feature_cache: int = 4096  # transformer: prompts whose frozen MiniLM features are memoised, 0 = none
    # False: the dense ablation. Same layers, widths and training; the coding passes its continuous
    # values (rate: p at every step; latency: the soft spike) and the neurons fire and reset through a
    # smooth step instead of the Heaviside (encoders/spiking.py). Saved configs without the key: True.
    spikes: bool = True
    # Guides (encoders/guides.py): a palette of up to MAX_COLOURS colours and a sketch cut to a sketch_grid x
    # sketch_grid grid, spike-coded into tokens after the caption's. Saved configs without the keys: off.
    palette: bool = False  # take a colour palette
    sketch_grid: int = 0  # side of the sketch grid; 0 = no sketch

    @property
    def guide_tokens(self) -> int:
        """Token slots the guides add after the caption's max_length (MAX_COLOURS palette colours + grid^2 cells)."""
        return (MAX_COLOURS if self.palette else 0) + self.sketch_grid**2

    def __post_init__(self) -> None:
        def check(ok: bool, option: str, why: str) -> None:
            if not ok:
                raise ValueError(f"EncoderConfig.{option}={getattr(self, option)!r}: {why}")

        check(self.kind in KINDS, "kind", f"must be one of {KINDS}")
        check(self.coding in CODINGS, "coding", f"must be one of {CODINGS}")
        check(self.rate_noise in RATE_NOISES, "rate_noise", f"must be one of {RATE_NOISES}")
        check(self.recurrent_cell in RECURRENT_CELLS, "recurrent_cell", f"must be one of {RECURRENT_CELLS}")
        for name in ("code_dim", "embed_dim", "hidden", "num_layers", "steps_per_token", "max_length", "min_freq"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an int >= 1")
        check(0.0 <= self.beta <= 1.0, "beta", "must lie in [0, 1]")
        check(self.threshold > 0, "threshold", "must be > 0")
        check(0 < self.slstm_threshold < 1, "slstm_threshold", "must lie in (0, 1)")
        check(self.latency_sigma > 0, "latency_sigma", "must be > 0")
        check(self.feature_cache >= 0, "feature_cache", "must be >= 0")
        check(isinstance(self.spikes, bool), "spikes", "must be true or false")
        check(isinstance(self.palette, bool), "palette", "must be true or false")
        check(isinstance(self.sketch_grid, int) and 0 <= self.sketch_grid <= 32, "sketch_grid",
              "must be an int in 0..32 (0 = no sketch)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"EncoderConfig: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
