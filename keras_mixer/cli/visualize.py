"""(placeholder: the visualize command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer visualize: not implemented yet")
