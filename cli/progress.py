"""What the CLI shows while it works: a spinner for a long phase, and how quiet third-party libraries are.

Both write to stderr, so a command's stdout (its table, its JSON) stays clean for scripts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """`--verbose`: show library warnings, logs and loading bars; otherwise hide them (the default)."""
    _state["verbose"] = verbose
    if verbose:
        return
    # read when transformers/diffusers/huggingface_hub are imported, which the commands do later
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # child processes: the worker's webhook consumer
    warnings.simplefilter("ignore")  # torchvision/transformers deprecations, Celery's superuser warning


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
