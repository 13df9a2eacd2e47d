"""Plugins shipped with Weir: billing, plus small examples."""
