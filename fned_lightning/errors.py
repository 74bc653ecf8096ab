"""The one exception type for user mistakes, and the command-line wrapper that reports them."""

import functools
import logging
import sys


class InputError(ValueError):
    """A bad path, class name, image or setting; the message names the problem and the fix."""


def input_error_in(error: BaseException | None) -> InputError | None:
    """The user mistake behind an error, also when Hydra's instantiate wrapped it."""
    while error is not None:
        if isinstance(error, InputError):
            return error
        error = error.__cause__
    return None


def exit_on_input_error(task):
    """A Hydra task whose user mistakes end in one logged line and exit code 2, not a traceback."""

    @functools.wraps(task)
    def run(cfg):
        try:
            return task(cfg)
        except Exception as error:
            user_error = input_error_in(error)
            if user_error is None:
                raise
            logging.getLogger(task.__module__).error("%s", user_error)
            sys.exit(2)

    return run
