"""The one exception type for user mistakes, the checks that turn a mistyped, missing or out-of-range
config value into one, and the command-line wrappers that report them: one line on stderr, exit 2."""

import difflib
import functools
import inspect
import numbers
import os
import re
import sys
import traceback

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue


class InputError(ValueError):
    """A bad path, class name, image or setting; the message names the problem and the fix."""


def check_number(
    option: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    above_low: bool = False,
    below_high: bool = False,
) -> None:
    """A numeric option of the right type within its range (`low` <= value <= `high`, or strictly with
    `above_low` / `below_high`), or one line that names it and what it takes."""
    kind = "a whole number" if integer else "a number"

    def shown(bound):
        return str(bound) if integer else f"{bound:g}"

    bounds = [
        f"{'>' if above_low else '>='} {shown(low)}" if low is not None else "",
        f"{'<' if below_high else '<='} {shown(high)}" if high is not None else "",
    ]
    wanted = f"{kind} {' and '.join(b for b in bounds if b)}".strip()
    right_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if (
        not right_type
        or (low is not None and (value <= low if above_low else value < low))
        or (high is not None and (value >= high if below_high else value > high))
    ):
        raise InputError(f"{option} must be {wanted}, got {value!r}")


SIZE_MULTIPLE = 16  # the networks halve an image four times


def check_image_size(image_size: int, option: str = "data.image_size") -> None:
    """Image sides the networks can halve four times; `option` names where the size came from."""
    if image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE:
        raise InputError(
            f"{option}={image_size} is not a multiple of {SIZE_MULTIPLE}; the networks halve it four "
            f"times. Use e.g. 32, 64, 128 or 256."
        )


def check_halved_to_4x4(image_size: int, network: str) -> None:
    """Image sides that a network halving the image down to 4x4 (DCGAN's, f-AnoGAN's) can take: powers of two.
    Every GAN config takes its networks' size from data.image_size, so the message names that."""
    check_image_size(image_size)
    if image_size & (image_size - 1):
        raise InputError(
            f"data.image_size={image_size} is not a power of two, which {network} needs (it halves the image "
            f"down to 4x4): use 16, 32, 64, 128 or 256 (model=padim and model=patchcore take any multiple of 16)"
        )


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for where torch sees none: one line, not Lightning's traceback. (Here, not in train.py:
    a sweep launcher pickles train.py's functions by value, and torch.backends does not pickle.)"""
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's gpu takes Apple's too
    if str(accelerator) in ("gpu", "cuda") and not torch.cuda.is_available() and not mps:
        raise InputError(
            f"trainer.accelerator={accelerator}, but torch sees no CUDA GPU here: give trainer.accelerator=cpu "
            f"(or auto), or run on a GPU machine (experiment=gpu asks for one)"
        )


def input_error_in(error: BaseException | None) -> InputError | None:
    """The user mistake behind an error, also when Hydra's instantiate wrapped it; a config value left
    at ??? (mandatory) becomes one that names the key."""
    while error is not None:
        if isinstance(error, InputError):
            return error
        if isinstance(error, MissingMandatoryValue):
            key = error.full_key
            return InputError(
                f"{key} has no value and needs one: add {key}=... to the command"
                + (" (the folder of your parts, e.g. data.root=parts)" if key == "data.root" else "")
            )
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
            hint = (
                f"did you mean {', '.join(f'{prefix}.{c}' for c in close)}?"
                if close
                else f"it takes: {', '.join(sorted(options))}"
            )
            raise InputError(f"{prefix}.{key} is not an option of {node._target_.rsplit('.', 1)[-1]}; {hint}")


def fail(message: str) -> None:
    """The one line a user mistake ends in, on stderr, and exit code 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def exit_on_input_error(task):
    """A Hydra task whose user mistakes end in one line on stderr and exit code 2, not a traceback."""

    @functools.wraps(task)
    def run(cfg):
        try:
            return task(cfg)
        except Exception as error:
            user_error = input_error_in(error)
            if user_error is None:
                raise
            fail(str(user_error))

    return run


def run_hydra_cli(main, config_name: str) -> None:
    """Run a `@hydra.main` entry point with Hydra's own errors as user mistakes: an unknown option of a
    config group (the valid ones listed), a key the config lacks (the closest named), an override
    Hydra cannot parse, and a run folder that cannot be created."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra then raises to us instead of printing a trace
    try:
        main()
    except OverrideParseException as error:
        fail(override_message(str(error)))
    except ConfigCompositionException as error:
        fail(composition_message(error, config_name))
    except OSError as error:
        if not made_by_hydra(error):
            raise
        fail(
            f"cannot create the run folder {error.filename} ({error.strerror}); choose another with "
            f"hydra.run.dir=... (hydra.sweep.dir=... with -m)"
        )
    except Exception as error:  # a sweep's job that failed on a user mistake: the others ran
        user_error = input_error_in(error)
        if user_error is None:
            raise
        fail(f"a job of the sweep failed: {user_error} (its folder holds failed.txt; the other jobs ran)")


def override_message(error: str) -> str:
    """Hydra's parse error as one line with the fix: a value with a character its grammar takes only inside
    quotes (~, a letter outside ASCII, ...) gets the override written back quoted."""
    first = error.splitlines()[0]
    override = re.search(r"Exception: ([\w.+~/-]+)=(.+)$", first)
    if override:
        key, value = override.groups()
        return (
            f"cannot read the command-line override {key}={value}: Hydra reads a value with ~ or characters "
            f"outside ASCII (or brackets, quotes, ...) only inside quotes; write '{key}=\"{value}\"'"
        )
    return f"cannot read the command-line override: {first}; write key=value, e.g. seed=1"


def made_by_hydra(error: OSError) -> bool:
    """Whether Hydra raised it while making a run or sweep folder (a read-only place, a parent that is a file)."""
    frames = traceback.extract_tb(error.__traceback__)
    return (
        error.filename is not None
        and any(
            frame.name in ("run_job", "launch", "_run_hydra", "run") and f"hydra{os.sep}" in frame.filename
            for frame in frames
        )
        and frames[-1].name in ("mkdir", "makedirs")
    )


def composition_message(error: Exception, config_name: str) -> str:
    """Hydra's composition error as one line with the fix."""
    text = str(error)
    unknown = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if unknown:
        group, option = unknown.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"unknown {group}={option}; choose one of: {', '.join(options)}" if options else text.splitlines()[0]
    missing = re.search(r"Could not override '([^']+)'", text)
    if missing:
        key = missing.group(1)
        close = close_keys(key, config_name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"{key} is not a key of the config; {hint}(a new key is added with +{key}=...)"
    return " ".join(text.split())


def close_keys(key: str, config_name: str) -> list[str]:
    """The config's keys closest to a mistyped one (the config composed with its defaults)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    parent, _, name = key.rpartition(".")
    # the command's own group choices (model=fanogan has other keys than the default model)
    choices = [a for a in sys.argv[1:] if re.fullmatch(r"[\w/]+=[^,]+", a) and not a.startswith("hydra")]
    GlobalHydra.instance().clear()
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            cfg = compose(config_name, overrides=choices)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # the hint is a courtesy: never a second error
        return []
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    return [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(name, keys, n=3)]
