"""Wire formats: bytes in, frozen data out, and back (RTP and RTCP packets, SDP offers, keyframe
detection). No state, no I/O, no clock: every other layer may use them."""
