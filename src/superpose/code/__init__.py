"""Code as data: bundles, their discovery, their storage, and script-mode packing."""
