"""HTTP enforcement: middleware, the IETF RateLimit fields and RFC 9457 problem responses."""
