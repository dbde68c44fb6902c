"""The caller's side: the client, functions, futures, durable calls, status and log readers."""
