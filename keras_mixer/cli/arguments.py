"""Argument types shared by the commands' parsers (argparse reports a bad value as a usage error)."""

import argparse


def positive_int(text):
    """An integer >= 1."""
    return _at_least(int, text, "an integer")


def non_negative_int(text):
    """An integer >= 0."""
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def port(text):
    """A TCP port to listen on: 0-65535 (0: any free port)."""
    value = _parse(int, text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {text}")
    return value


def positive_float(text):
    """A number > 0."""
    return _at_least(float, text, "a number")


def _parse(kind, text, what):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _at_least(kind, text, what):
    value = _parse(kind, text, what)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be {'at least 1' if kind is int else 'positive'}, got {text}")
    return value
