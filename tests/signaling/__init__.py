"""Tests: the signaling tier (tests/README.md)."""
