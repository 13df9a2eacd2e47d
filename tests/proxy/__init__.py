"""Tests of the core (`proxy/`), one file per module or concern."""
