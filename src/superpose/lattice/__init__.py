"""The lattice: nats-server (embedded or remote) and the JetStream assets on it."""
