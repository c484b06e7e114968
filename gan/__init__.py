"""spikegan networks: conditional StyleGAN2 generator and discriminator on spike codes."""
from .config import DiscriminatorConfig, GeneratorConfig, ModelConfig
from .discriminator import Discriminator
from .generator import Generator
from .layers import MappingNetwork
from .presets import preset

__all__ = ["DiscriminatorConfig", "GeneratorConfig", "ModelConfig", "preset", "Discriminator", "Generator", "MappingNetwork"]
