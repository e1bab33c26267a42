"""``cnnvis --help``, every subcommand's help, ``--version`` and ``python -m cnnvis_ext``."""
import subprocess
import sys

import pytest

from .helpers import SUBCOMMANDS, run


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_of_every_subcommand(capsys, sub):
    rc, out, _ = run(capsys, sub, "--help")
    assert rc == 0
    assert f"cnnvis {sub}" in out and "--device" in out


def test_top_level_help_and_version(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and all(s in out for s in SUBCOMMANDS)
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and "cnnvis_ext" in out


def test_python_m_help():
    r = subprocess.run([sys.executable, "-m", "cnnvis_ext", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: cnnvis" in r.stdout and "attribute" in r.stdout


def test_learned_prior_flags_in_help(capsys):
    rc, out, _ = run(capsys, "train-inverter", "--help")
    assert rc == 0 and "cnnvis train-inverter" in out
    for flag in ("--layer", "--data", "--out", "--epochs", "--batch-size", "--lr", "--loss",
                 "--device", "--seed", "--quiet"):
        assert flag in out
    _, out, _ = run(capsys, "invert", "--help")
    assert "--learned" in out
    _, out, _ = run(capsys, "actmax", "--help")
    assert "--prior" in out


def test_parser_has_one_add_function_per_subcommand():
    from cnnvis_ext.cli import parser

    names = [f.__name__ for f in parser.SUBCOMMANDS]
    assert names == ["add_" + s.replace("-", "_") for s in SUBCOMMANDS]
