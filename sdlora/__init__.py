"""SD-LoRA Lab: Scalable Decoupled LoRA (Wu et al., ICLR 2025) for class-incremental learning
with timm ViTs, and the paper's analyses. The package never imports streamlit."""
from .config import METHODS, TrainConfig

__all__ = ["METHODS", "TrainConfig"]
__version__ = "0.1.0"
