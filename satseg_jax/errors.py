"""The one exception type for errors a user can cause (bad file, bad field, bad config).

The CLI catches it, prints the message on one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class SatsegError(Exception):
    """A user-fixable error; the message names the file or field and says how to fix it."""
