"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a path): shown as one line, never a traceback."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages from libraries are folded.
        super().__init__(" ".join(str(message).split()))
