"""The Trio shell: listeners, connections, sessions and their task tree, the UDP sockets and the media
mux, HTTP and metrics. Everything that awaits, reads a clock or touches a socket lives here."""
