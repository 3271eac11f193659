"""Mesh authentication (ZeroMQ CURVE) and its key tooling."""
