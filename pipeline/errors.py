"""The one error type the CLI turns into a single line and a non-zero exit."""


class FervidError(Exception):
    """A problem the user can fix: bad input, bad config, missing model. The message says what to do."""


def first_line(e: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """An exception as one short line for a record or message; the type name when it says nothing."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]
