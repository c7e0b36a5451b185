"""Adapters for the protocols and schemas of external projects prm interoperates with."""
