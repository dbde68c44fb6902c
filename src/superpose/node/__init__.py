"""A node: one agent process that takes invocations, plus executor subprocesses that run them."""
