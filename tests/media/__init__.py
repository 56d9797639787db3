"""Tests: the media tier (tests/README.md)."""
