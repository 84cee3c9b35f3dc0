"""(placeholder: the convert command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer convert: not implemented yet")
