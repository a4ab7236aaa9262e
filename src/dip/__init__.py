"""DIP: dynamic interleaved pipelines for large multimodal model training."""

__version__ = "0.1.0"
