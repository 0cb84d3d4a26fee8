"""The one error type the CLI turns into a single line and a non-zero exit."""


class FervidError(Exception):
    """A problem the user can fix: bad input, bad config, missing model. The message says what to do."""
