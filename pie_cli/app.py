"""The typer app: every command is registered here, one module per command.

`main()` is the console entry point. It maps `PieError` to a one-line message and its exit
code, and a parse error (an unknown option, a value of the wrong type, a single-valued option
given twice with different values) to one line with the command's `--help` as the hint, exit 2;
any other exception becomes a one-line runtime error. Under `--json` every failure also writes one
JSON object on stdout (error, hint, exit code, and what was kept, e.g. a partial record's path).
PIE_DEBUG=1 adds the traceback on stderr and changes nothing else.
"""
from __future__ import annotations

import os
import sys
import traceback

import typer
import typer.main

from pie_cli.options import check_repeated_options
from pie_cli.output import print_error_json
from pie_core.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, PieError

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

app = typer.Typer(
    name="pie",
    help="Profile a machine, tune a CPU-backed KV cache pool, run it, and report throughput and latency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """pie: measure the link and the layers, plan the KV pool, run it, and compare runs.

    Examples: pie profile --quick | pie tune --model opt-30b --hardware gh200 | pie bench --model opt-125m
    """


# --- command registration, in the order a user works: measure, plan, run, inspect, compare -------
from pie_cli import bench_cmd, compare_cmd, models_cmd, profile_cmd, report_cmd, serve_cmd, show_cmd, tune_cmd  # noqa: E402

app.command("profile")(profile_cmd.profile)
app.command("tune")(tune_cmd.tune)
app.command("bench")(bench_cmd.bench)
app.command("serve")(serve_cmd.serve)
app.command("show")(show_cmd.show)
app.command("compare")(compare_cmd.compare)
app.command("report")(report_cmd.report)
app.command("models")(models_cmd.models)


def main() -> None:
    args = sys.argv[1:]
    json_mode = _json_mode(args)
    try:
        _check_repeated(args)
        code = app(standalone_mode=False, prog_name="pie")  # parse errors come here, not as click's usage box
    except NoArgsIsHelpError as err:  # bare `pie`: the help (rich prints it itself), as a usage error
        text = err.format_message()
        if text.strip():
            print(text, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "pie"
        message = " ".join(err.format_message().split()).rstrip(".")
        _fail(PieError(message, f"see `{command} --help`"), EXIT_BAD_INPUT, json_mode)
    except PieError as err:
        _fail(err, err.exit_code, json_mode)
    except KeyboardInterrupt as err:
        _fail(PieError("interrupted"), 130, json_mode, getattr(err, "json_details", None))
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - last-resort mapping to one line (PIE_DEBUG=1 adds the traceback)
        first_line = (str(err).strip().splitlines() or [""])[0]
        _fail(PieError(f"{type(err).__name__}: {first_line}", "rerun with PIE_DEBUG=1 for a traceback"), EXIT_RUNTIME,
              json_mode, getattr(err, "json_details", None))
    sys.exit(code if isinstance(code, int) else 0)


def _fail(err: PieError, exit_code: int, json_mode: bool, details: dict | None = None) -> None:
    """One `error:` line on stderr (after the traceback with PIE_DEBUG=1), one JSON object on stdout under --json."""
    if os.environ.get("PIE_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)  # the traceback is added; the message and the exit code stay
    print(f"error: {err.one_line()}", file=sys.stderr)
    if json_mode:
        print_error_json(err.message, err.hint, exit_code, {**getattr(err, "json_details", {}), **(details or {})})
    sys.exit(exit_code)


def _json_mode(args: list[str]) -> bool:
    """Whether the command was asked for JSON (`--json`, or `pie compare --format json`)."""
    args = args[: args.index("--")] if "--" in args else args
    if "--json" in args:
        return True
    return any(a == "--format=json" or (a == "--format" and args[i + 1:i + 2] == ["json"]) for i, a in enumerate(args))


def _check_repeated(args: list[str]) -> None:
    """A single-valued option given twice with different values is bad input (pie_cli/options.py)."""
    name = next((a for a in args if not a.startswith("-")), None)
    command = typer.main.get_command(app)
    sub = getattr(command, "commands", {}).get(name) if name else None
    if sub is not None:
        check_repeated_options(sub, args[args.index(name) + 1:])


if __name__ == "__main__":
    main()
