"""Tests of the plugins (`plugins/`), mirroring its folders."""
