"""Tests of the web shell (proxy/web) and the pages plugins build on it."""
