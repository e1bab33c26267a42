"""cnnvis evaluate: every method by every metric, as Markdown, CSV and curve PNGs."""
from .helpers import run


def test_evaluate_writes_the_tables_and_curves(checkpoint, tmp_path, capsys):
    rc, out, err = run(capsys, "evaluate", "--model", checkpoint, "--num-images", "2", "--quiet",
                       "--out", tmp_path, "--methods", "saliency", "guided", "gradcam",
                       "--metrics", "deletion", "insertion", "aopc", "mprt", "--steps", "4")
    assert rc == 0, err
    md = (tmp_path / "evaluate.md").read_text()
    assert "deletion AUC (lower is better)" in md and "| guided |" in md
    csv = (tmp_path / "evaluate.csv").read_text().splitlines()
    assert csv[0] == "method,deletion,insertion,aopc,mprt"
    assert [r.split(",")[0] for r in csv[1:]] == ["saliency", "guided", "gradcam"]
    assert all(len(r.split(",")) == 5 for r in csv[1:])
    for name in ("deletion", "insertion"):
        assert (tmp_path / f"evaluate_{name}.png").is_file()


def test_evaluate_rejects_unknown_metric(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "evaluate", "--model", checkpoint, "--metrics", "nope",
                     "--out", tmp_path)
    assert rc != 0 and "--metrics" in err


def test_evaluate_ranks_every_attribution_method(checkpoint, tmp_path, capsys):
    """--methods takes every name of ALL_ATTRIBUTION_METHODS (the CAM family, Guided Grad-CAM,
    integrated gradients and occlusion beside the first five), each ranked by every metric."""
    from cnnvis_ext.cli.figures import ALL_ATTRIBUTION_METHODS

    rc, out, err = run(capsys, "evaluate", "--model", checkpoint, "--num-images", "2", "--quiet",
                       "--out", tmp_path, "--methods", *ALL_ATTRIBUTION_METHODS,
                       "--metrics", "deletion", "insertion", "aopc", "mprt", "--steps", "4")
    assert rc == 0, err
    csv = (tmp_path / "evaluate.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv[1:]] == list(ALL_ATTRIBUTION_METHODS)
    for r in csv[1:]:
        vals = [float(v) for v in r.split(",")[1:]]
        assert len(vals) == 4 and all(v == v for v in vals), r  # no NaN
    md = (tmp_path / "evaluate.md").read_text()
    assert "| scorecam |" in md and "| occlusion |" in md


def test_evaluate_rejects_unknown_method(checkpoint, tmp_path, capsys):
    rc, _, err = run(capsys, "evaluate", "--model", checkpoint, "--methods", "nope",
                     "--out", tmp_path)
    assert rc != 0 and "--methods" in err
