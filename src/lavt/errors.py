"""The one exception type for mistakes a user can make (bad paths, bad values, bad files).

The CLI turns it into a single line on stderr and exit code 2, never a traceback.
"""


class LAVTUserError(ValueError):
    """A problem with the user's input: the message says what, where, and what to do."""
