"""Tests: the transport tier (tests/README.md)."""
