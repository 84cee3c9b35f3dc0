"""(placeholder: the export command is being written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("keras-mixer export: not implemented yet")
