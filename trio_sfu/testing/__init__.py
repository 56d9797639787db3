"""Test doubles for code that uses trio_sfu, like `trio.testing`: nothing in the server imports them."""
