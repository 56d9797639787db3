"""Tests: the e2e tier (tests/README.md)."""
