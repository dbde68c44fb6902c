"""A lattice on this machine: the `up` supervisor, its state folder, the embedded nats-server."""
