"""The one exception type for bad user input (core: any layer may raise it).

A ``UsageError`` says what the user gave and why it cannot be used; the CLI
boundary (:func:`caffe_attacks.cli.run_cli`) prints it as one ``error: ...``
line and exits with status 2.
"""


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""
