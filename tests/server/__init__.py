"""Tests: the server tier (tests/README.md)."""
