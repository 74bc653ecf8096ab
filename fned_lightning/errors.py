"""The one exception type for user mistakes: the CLI prints its message, not a traceback."""


class InputError(ValueError):
    """A bad path, class name, image or setting; the message names the problem and the fix."""
