"""(placeholder: the benchmark command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer benchmark: not implemented yet")
