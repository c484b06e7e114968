"""spikegan networks: conditional StyleGAN2 generator and discriminator on spike codes."""
from .config import DiscriminatorConfig, GeneratorConfig, ModelConfig, preset
from .discriminator import Discriminator
from .generator import Generator, MappingNetwork

__all__ = ["DiscriminatorConfig", "GeneratorConfig", "ModelConfig", "preset", "Discriminator", "Generator", "MappingNetwork"]
