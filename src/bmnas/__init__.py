"""bmnas: Bilevel Multimodal Neural Architecture Search."""

__version__ = "0.1.0"
