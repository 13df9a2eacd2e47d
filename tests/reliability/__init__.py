"""Reliability tests (issue 5): try to break Weir."""
