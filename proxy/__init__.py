"""Weir: a streaming reverse proxy for LLM APIs with a plugin pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
