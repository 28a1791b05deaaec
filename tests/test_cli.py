"""The command-line entry point: every command has --help, bad input exits 2 without a traceback."""

import subprocess
import sys

import pytest

from mai_core.cli import build_parser, main

COMMANDS = ["demo", "import-slide", "validate", "genes", "augment-score", "train", "predict", "evaluate",
            "ensemble", "gradcam", "jobs", "backbones"]


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "mai_core", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([cmd, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_backbones_lists_offline_default(capsys):
    assert main(["backbones", "--cpu"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("efficientnet_lite0"))
    assert "package" in line


def test_user_error_is_a_message_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mai_core", "validate", "--data", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "dataset folder not found" in out.stderr
    assert "Traceback" not in out.stderr
