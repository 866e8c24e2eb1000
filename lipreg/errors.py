"""The exception types lipreg raises for problems the user can fix."""


class LipregError(ValueError):
    """A configuration or input problem the user can fix; the CLI prints it as one line."""


class TrainingDiverged(LipregError):
    """Training reached a non-finite loss or parameter (raised by ``DivergenceGuard``)."""
