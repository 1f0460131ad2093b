"""adaspark: AdaSpark adaptive cube-sparse attention and token-sparse FFN for long-video LLMs."""

__version__ = "0.1.0"
