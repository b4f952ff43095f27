"""Small helpers several parts use: whole-file writes, descriptor limits, TLS contexts."""
