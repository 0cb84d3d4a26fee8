"""The one error type the CLI turns into a single line and a non-zero exit."""


class FervidError(Exception):
    """A problem the user can fix: bad input, bad config, missing model. The message says what to do."""


def first_line(e: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """An exception as one short line for a record or message; the type name when it says nothing."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    line = shorten(lines[0], limit)
    return f"{type(e).__name__}: {line}" if with_type else line


def shorten(text: str, limit: int) -> str:
    """text cut to at most limit characters at a word boundary, with an ellipsis where it was cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"
