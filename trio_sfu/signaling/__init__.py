"""The signaling protocol's vocabulary, sans-IO: its messages and error codes, token checks, and the
limits that refuse requests."""
