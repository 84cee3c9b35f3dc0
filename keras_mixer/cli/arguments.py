"""Argument types shared by the commands' parsers (argparse reports a bad value as a usage error)."""

import argparse


def positive_int(text):
    """An integer >= 1."""
    return _at_least(int, text, "an integer")


def positive_float(text):
    """A number > 0."""
    return _at_least(float, text, "a number")


def _at_least(kind, text, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be {'at least 1' if kind is int else 'positive'}, got {text}")
    return value
