"""trio_sfu: a WebRTC SFU on Trio."""
