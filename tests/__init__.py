"""Weir's test suite: tests/proxy and tests/plugins mirror the source tree; e2e, reliability
and web (pages in Chromium) are system tests across both."""
