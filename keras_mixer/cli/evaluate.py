"""(placeholder: the evaluate command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer evaluate: not implemented yet")
