"""One peer's secure transport, sans-IO: the ICE-lite agent, the DTLS endpoint, SRTP contexts and the
server's certificate. Bytes and time in; bytes, events and deadlines out."""
