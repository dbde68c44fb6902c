"""Small helpers every layer may use: the event loop, deferred imports."""
