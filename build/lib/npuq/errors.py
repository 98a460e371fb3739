"""The one exception type users see. The CLI prints it as a single line and exits with status 2."""


class NpuqError(Exception):
    """A problem with the user's input (file, data, profile, checkpoint), stated in one line."""
