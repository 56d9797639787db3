"""Real WebRTC peers and network tools the tests drive (tests/README.md)."""
