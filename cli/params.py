"""Help that reads as a person writes it: an argument is shown by its metavar alone (PROMPT, FOLDER).

typer lists each argument with a type column (`<str>`, `<path>`, or `TEXT` in older versions) beside its
metavar; an argument whose type has an empty metavar shows none.
"""

from __future__ import annotations

from typing import Any

try:  # typer 0.2x carries its own copy of click
    from typer._click.types import StringParamType
except ImportError:  # older typer runs on click
    from click.types import StringParamType


class _Named(StringParamType):
    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return ""


NAMED = _Named()  # typer.Argument(metavar="PROMPT", click_type=NAMED, ...); a Path annotation still converts
