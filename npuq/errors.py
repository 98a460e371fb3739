"""The exceptions users see. The CLI prints each as a single ``error:`` line and exits with its status."""


class NpuqError(Exception):
    """A problem with the user's input (file, data, profile, checkpoint), stated in one line (exit 2)."""

    exit_code = 2


class Interrupted(NpuqError):
    """Ctrl-C or SIGTERM stopped a command; the message says what was kept (exit 130, as a shell does)."""

    exit_code = 130
