"""agent.cli: ``run`` parses with a parser that leaves out the subcommands living in their own
modules (their code is memory the long-running process never uses); everything else, and
``run`` itself, parses as with the full parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli

ROOT = Path(__file__).resolve().parents[2]
PLUGGED = ("models", "flash", "certs", "service")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "-c", "x.yaml"], "run"),
        (["--log-level", "debug", "run", "-c", "x.yaml"], "run"),
        (["--log-level=debug", "run", "-c", "x.yaml"], "run"),
        (["models", "list", "-c", "run"], "models"),
        (["check", "-c", "run"], "check"),
        (["--help"], None),
        ([], None),
        (["--log-level"], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert cli._command_of(argv) == command


def test_run_parses_the_same_with_the_slim_parser() -> None:
    for argv in (["run", "-c", "a.yaml"], ["--log-level", "info", "run", "--config", "b.yaml"]):
        assert vars(cli.build_parser(full=False).parse_args(argv)) == vars(
            cli.build_parser().parse_args(argv)
        )


def test_the_slim_parser_has_no_plugged_subcommand_and_the_full_one_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    slim, full = cli.build_parser(full=False), cli.build_parser()
    for name in PLUGGED:
        with pytest.raises(SystemExit) as refused:
            slim.parse_args([name, "--help"])
        assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err
        with pytest.raises(SystemExit) as helped:
            full.parse_args([name, "--help"])
        assert helped.value.code == 0 and name in capsys.readouterr().out


def test_run_imports_no_plugged_command_and_other_commands_still_work(tmp_path: Path) -> None:
    """``edge-agent run`` on a config it refuses (so it returns at once) has not imported the
    plugged commands' modules; ``edge-agent models --help`` (the full parser) still answers."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: {name: x}\ndevices: []\n", encoding="utf-8")
    code = (
        "import sys; from agent.cli import main; rc = main(['run', '-c', sys.argv[1]]); "
        "mods = [m for m in ('agent.modelstore.flash', 'agent.modelstore.commands', "
        "'agent.ops.certs', 'agent.ops.service') if m in sys.modules]; print(rc, mods)"
    )
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", code, str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "2 []", (out.stdout, out.stderr)
    helped = subprocess.run(
        [sys.executable, "-m", "agent", "models", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "install" in helped.stdout, helped.stderr
