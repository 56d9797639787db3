"""More than one process: worker processes on one host under a supervisor, and relays that play a
stream from the worker (or node) that holds it for the players of another."""
