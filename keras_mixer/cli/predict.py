"""(placeholder: the predict command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer predict: not implemented yet")
