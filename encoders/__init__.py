"""Prompt parsing, tokenizers, spike coding and spiking text encoders (snntorch)."""
from .code import SpikeCode
from .coding import SpikeCoder
from .config import EncoderConfig
from .encoder import (EmbeddingEncoder, RecurrentEncoder, SpikingTextEncoder, TransformerEncoder, build_encoder,
                      make_tokenizer)
from .minilm import MiniLMTokenizer
from .prompt import PromptError, parse_prompt
from .raster import plot_spikes, spike_raster
from .tokenizer import TokenBatch, WordTokenizer, load_tokenizer

__all__ = [
    "EmbeddingEncoder", "EncoderConfig", "MiniLMTokenizer", "PromptError", "RecurrentEncoder", "SpikeCode",
    "SpikeCoder", "SpikingTextEncoder", "TokenBatch", "TransformerEncoder", "WordTokenizer", "build_encoder",
    "load_tokenizer", "make_tokenizer", "parse_prompt", "plot_spikes",
    "spike_raster",
]
