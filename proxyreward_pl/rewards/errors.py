"""Judge answers that do not have the asked-for form."""


class ParseError(ValueError):
    """Retried by the score stage, then recorded as a failure with this message."""
