"""Tests: the wire tier (tests/README.md)."""
