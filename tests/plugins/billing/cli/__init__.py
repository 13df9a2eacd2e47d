"""Tests of billing's `weir` commands (`plugins/billing/cli/`)."""
