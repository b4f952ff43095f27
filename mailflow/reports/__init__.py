"""Reports mailflow sends about its own deliveries (TLS reports, RFC 8460)."""
