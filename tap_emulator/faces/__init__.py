"""Faces: thin adapters that turn a transport's requests into tree requests (no business rule here)."""
