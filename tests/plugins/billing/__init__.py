"""Tests of the billing plugin."""
