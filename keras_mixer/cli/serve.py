"""(placeholder: the serve command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer serve: not implemented yet")
