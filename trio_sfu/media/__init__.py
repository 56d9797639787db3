"""The media model, sans-IO: published streams and their tracks (producers), each player's view of a
track (consumers), the answers that negotiate them, and each leg's RTCP. Time is passed in; what it
sends goes through Protocols the server layer implements."""
