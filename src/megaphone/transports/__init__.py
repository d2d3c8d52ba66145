"""Transports move frames between sockets and the hub. They hold no broadcast logic themselves."""
