"""The error every ``tb-bn`` subcommand raises for its user."""


class CommandError(Exception):
    """A user-facing error: printed as ``tb-bn: error: <message>``, exit status 2."""
