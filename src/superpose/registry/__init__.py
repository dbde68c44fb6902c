"""The registry of apps and versions, routing rules, and placement of calls on nodes."""
