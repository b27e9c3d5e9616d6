"""The one exception type the CLI turns into a clean message and exit code 2."""


class FinetuneError(Exception):
    """A problem the user can fix (bad recipe, missing file, missing package): no traceback."""
