"""The pieces of `scripts/bench.py`: media fixture, client legs (signaling, ICE, DTLS-SRTP), the
publisher and subscriber processes, /proc readings, and the run/report logic."""
