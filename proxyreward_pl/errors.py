"""The one error type the CLI reports as a message (no traceback): bad input or a refused operation."""


class ProxyRewardError(Exception):
    """Something the user can fix; the message says what and where."""
