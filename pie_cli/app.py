"""The typer app: every command is registered here, one module per command.

`main()` is the console entry point. It maps `PieError` to a one-line message and its exit
code, and a parse error (an unknown option, a value of the wrong type) to one line with the
command's `--help` as the hint, exit 2; any other exception becomes a one-line runtime error,
with the traceback only when PIE_DEBUG=1.
"""
from __future__ import annotations

import os
import sys

import typer

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
from pie_cli import bench_cmd, compare_cmd, models_cmd, profile_cmd, report_cmd, show_cmd, tune_cmd  # noqa: E402

app.command("profile")(profile_cmd.profile)
app.command("tune")(tune_cmd.tune)
app.command("bench")(bench_cmd.bench)
app.command("show")(show_cmd.show)
app.command("compare")(compare_cmd.compare)
app.command("report")(report_cmd.report)
app.command("models")(models_cmd.models)


def main() -> None:
    try:
        code = app(standalone_mode=False, prog_name="pie")  # parse errors come here, not as click's usage box
    except NoArgsIsHelpError as err:  # bare `pie`: the help (rich prints it itself), as a usage error
        text = err.format_message()
        if text.strip():
            print(text, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "pie"
        message = " ".join(err.format_message().split()).rstrip(".")
        print(f"error: {message} (hint: see `{command} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except PieError as err:
        if os.environ.get("PIE_DEBUG") == "1":
            raise
        print(f"error: {err.one_line()}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # last-resort mapping to one line
        if os.environ.get("PIE_DEBUG") == "1":
            raise
        first_line = (str(err).strip().splitlines() or [""])[0]
        print(f"error: {type(err).__name__}: {first_line} (hint: rerun with PIE_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(EXIT_RUNTIME)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
