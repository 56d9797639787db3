"""Tests: the bench tier (tests/README.md)."""
