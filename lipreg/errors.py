"""The one exception type lipreg raises for bad user input."""


class LipregError(ValueError):
    """A configuration or input problem the user can fix; the CLI prints it as one line."""
