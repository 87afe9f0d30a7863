"""The `emoe-gate` command line. Each area registers its commands from `cli/<area>.py`.

Nothing here imports torch: model code is imported inside the commands that need it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import audit, model, policy, reference, report, service, webhooks
from cli.progress import set_verbose

app = typer.Typer(
    name="emoe-gate",
    help="Uncertainty-gated text-to-image middleware (EMoE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
groups: dict[str, typer.Typer] = {
    "audit": typer.Typer(help="Verify and redact the hash-chained audit log.", no_args_is_help=True),
    "eval": typer.Typer(
        help="The paper's experiments: OOD AUROC, quartiles, languages, ablations.", no_args_is_help=True
    ),
    "keys": typer.Typer(help="Manage per-tenant API keys.", no_args_is_help=True),
    "reference": typer.Typer(help="Build and inspect the reference ensemble.", no_args_is_help=True),
    "webhooks": typer.Typer(help="Tenants' webhook signing secrets.", no_args_is_help=True),
}
for _name, _group in groups.items():
    app.add_typer(_group, name=_name)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"emoe-gate {version('emoe-gate')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("emoe-gate (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also show the libraries' warnings, logs and loading bars (hidden by default).",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Uncertainty-gated text-to-image middleware (EMoE)."""
    ctx.call_on_close(set_verbose(verbose))


for _area in (model, policy, audit, service, report, reference, webhooks):
    _area.register(app, groups)


def main() -> None:
    """Console-script entry point: a bad EMOE_* setting is one line and exit 2, not a traceback."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            name = f"EMOE_{'_'.join(str(part) for part in error['loc']).upper()}"
            typer.echo(f"error: {message if message.startswith(name) else f'{name}: {message}'}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
