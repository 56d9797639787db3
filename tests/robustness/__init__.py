"""Tests: the robustness tier (tests/README.md)."""
