"""Billing's pages and HTTP API routes."""
