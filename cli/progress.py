"""What the CLI shows while it works: a spinner for a long phase, and how quiet third-party libraries are.

Both write to stderr, so a command's stdout (its table, its JSON) stays clean for scripts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_state = {"verbose": False}
# read when transformers/diffusers/huggingface_hub are imported (which the commands do later), and by child
# processes (the worker's webhook consumer)
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",
}


def set_verbose(verbose: bool) -> Callable[[], None]:
    """`--verbose`: show library warnings, logs and loading bars; otherwise hide them (the default).

    Returns what undoes it, for when the command has run (the CLI called in process, as tests do, must not
    leave this process or the environment its later children inherit quieter).
    """
    previous = _state["verbose"]
    _state["verbose"] = verbose
    if verbose:
        return lambda: _state.update(verbose=previous)
    added = {k: v for k, v in QUIET_ENV.items() if k not in os.environ}
    os.environ.update(added)
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.simplefilter("ignore")  # torchvision/transformers deprecations, Celery's superuser warning

    def restore() -> None:
        caught.__exit__(None, None, None)
        for key in added:
            os.environ.pop(key, None)
        _state["verbose"] = previous

    return restore


def is_verbose() -> bool:
    return _state["verbose"]


def quiet_libraries() -> None:
    """Lower transformers' and diffusers' loggers to errors and hide their progress bars (once imported)."""
    if _state["verbose"]:
        return
    import importlib

    for name in ("transformers", "diffusers"):
        try:
            logging_ = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        logging_.set_verbosity_error()
        logging_.disable_progress_bar()


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """Show `message` with a spinner on stderr while the block runs; one plain line when not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console.print(f"{message} ...", highlight=False)
        yield
        return
    with console.status(f"{message} ...", spinner="dots"):
        yield
