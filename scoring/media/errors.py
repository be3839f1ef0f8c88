"""The one error type a user can cause.

Anything a user sends that we cannot work with raises ``UserError`` with a message that
says what was wrong and what to do. The command line prints it as one line and exits 2;
every other exception is our bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, bad parameters, or a resource that is not there."""

    exit_code = 2
