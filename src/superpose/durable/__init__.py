"""The durable path: invocations persisted in JetStream before they are acknowledged."""
