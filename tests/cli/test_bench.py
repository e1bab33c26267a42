"""``cnnvis bench``: runs the bench_*.py scripts of a folder and reports the ones that fail."""
from cnnvis_ext.cli import main

from .helpers import assert_one_line_error, run


def test_bench_errors(tmp_path, capsys):
    rc, _, err = run(capsys, "bench", "--bench-dir", tmp_path)
    assert_one_line_error(rc, err, "no bench_*.py scripts")
    (tmp_path / "bench_ok.py").write_text("import sys\nprint('| shape | ours |', sys.argv[1:])\n")
    (tmp_path / "bench_fail.py").write_text("import sys\nsys.exit(3)\n")
    rc = main(["bench", "--bench-dir", str(tmp_path), "--only", "ok"])
    assert rc == 0
    rc, _, err = run(capsys, "bench", "--bench-dir", tmp_path, "--only", "nothing")
    assert_one_line_error(rc, err, "no benchmark named nothing", "bench_ok")
    rc, out, err = run(capsys, "bench", "--bench-dir", tmp_path, "--only", "fail")
    assert_one_line_error(rc, err, "benchmark(s) failed: bench_fail")


def test_bench_runs_scripts_quick(tmp_path, capfd):
    (tmp_path / "bench_x.py").write_text("import sys\nprint('| shape | ours |', sys.argv[1:])\n")
    assert main(["bench", "--bench-dir", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert "## bench_x" in out and "['--quick']" in out


def test_bench_finds_the_source_tree_benchmarks(capsys):
    """Without --bench-dir: the checkout's benchmarks/ folder (a name that matches nothing
    lists the scripts found there)."""
    rc, _, err = run(capsys, "bench", "--only", "no_such_bench")
    assert_one_line_error(rc, err, "no benchmark named no_such_bench", "bench_conv_relu_pool")
