"""The one exception type for user mistakes, the checks that turn a mistyped or missing config value
into one, and the command-line wrapper that reports them."""

import difflib
import functools
import inspect
import logging
import sys

from hydra.utils import get_class
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue


class InputError(ValueError):
    """A bad path, class name, image or setting; the message names the problem and the fix."""


SIZE_MULTIPLE = 16  # the networks halve an image four times


def check_image_size(image_size: int, option: str = "data.image_size") -> None:
    """Image sides the networks can halve four times; `option` names where the size came from."""
    if image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE:
        raise InputError(f"{option}={image_size} is not a multiple of {SIZE_MULTIPLE}; the networks halve it four "
                         f"times. Use e.g. 32, 64, 128 or 256.")


def input_error_in(error: BaseException | None) -> InputError | None:
    """The user mistake behind an error, also when Hydra's instantiate wrapped it; a config value left
    at ??? (mandatory) becomes one that names the key."""
    while error is not None:
        if isinstance(error, InputError):
            return error
        if isinstance(error, MissingMandatoryValue):
            key = error.full_key
            return InputError(f"{key} has no value and needs one: add {key}=... to the command"
                              + (" (the folder of your parts, e.g. data.root=parts)" if key == "data.root" else ""))
        error = error.__cause__ or error.__context__
    return None


def accepted_options(target: str) -> set[str] | None:
    """The keyword arguments that `target` (a class path) takes, following **kwargs up its bases;
    None when it takes any."""
    names: set[str] = set()
    for cls in get_class(target).__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return None


def check_options(node: DictConfig, prefix: str) -> None:
    """An option that the config's `_target_` does not take (a typo such as trainer.max_epoch) is named,
    with the closest ones it does take, before anything is built."""
    options = accepted_options(node._target_)
    if options is None:
        return
    for key in node:
        if not str(key).startswith("_") and key not in options:
            close = difflib.get_close_matches(str(key), sorted(options), n=3)
            hint = f"did you mean {', '.join(f'{prefix}.{c}' for c in close)}?" if close else \
                f"it takes: {', '.join(sorted(options))}"
            raise InputError(f"{prefix}.{key} is not an option of {node._target_.rsplit('.', 1)[-1]}; {hint}")


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
