"""Errors a user can cause. The CLI prints them as one line and exits non-zero (no traceback)."""


class LstmopsError(Exception):
    """Base class of expected, user-facing failures."""


class ConfigError(LstmopsError):
    """A wrong key or value in params.yaml or a -S override."""


class DataError(LstmopsError):
    """Input data that cannot be read or used (file, column, row in the message)."""


class ValidationFailed(LstmopsError):
    """Great Expectations checks failed; ``lines`` holds one line per failed expectation."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def report_lines(exc: LstmopsError) -> list[str]:
    """What a user sees on stderr for an expected failure (CLI and in-process stages alike)."""
    if isinstance(exc, ValidationFailed):
        header = f"error: validation failed ({len(exc.lines)} failed expectations):"
        return [header, *(f"  {line}" for line in exc.lines)]
    return [f"error: {exc}"]


class StageFailed(LstmopsError):
    """A pipeline stage failed; downstream stages did not run."""


class ServiceUnavailable(LstmopsError):
    """A server the stage needs (MLflow, S3) could not be reached: worth retrying later.

    The CLI exits with ``EXIT_UNAVAILABLE`` for it, so an orchestrator can tell a passing outage
    from bad data or bad params, which no retry fixes."""


class StageUnavailable(StageFailed):
    """A stage failed because a server was unreachable (its command exited with EXIT_UNAVAILABLE)."""


class ModelRefused(LstmopsError):
    """A registered version whose file does not match what the version records (sha256, size,
    signature), or that records nothing to check it against: never loaded."""


EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL in sysexits.h: "try again later"


def row_label(position: int) -> str:
    """Rows are counted from 1 at the first data row (line 2 of a CSV with a header)."""
    return f"row {position + 1}"
