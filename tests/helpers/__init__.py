"""Shared test code: the tiny model, the NumPy reference, the stand-in server, process helpers."""
