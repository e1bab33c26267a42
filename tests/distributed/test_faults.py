"""Fault injection into a resumable job: a process killed (SIGKILL) at every point of the
write-and-rename sequence of its unit files and manifest, then restarted, ends with the outputs of
an uninterrupted run, bit for bit, and no temporary file; between the runs, every output file that
exists is whole."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# The job: five units, each writing one file, in one process. KILL_AT=k kills the process at the
# k-th os.replace (the unit files and the manifest are all moved into place by it), before the
# rename (a whole temporary file left behind) or after it (the file in place, the manifest not
# yet telling).
JOB = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from cnnvis_ext.distributed import JobDir, WorkUnit, run_units
    from cnnvis_ext.io import atomic_save

    root = Path(sys.argv[1])
    kill_at, when = int(os.environ.get("KILL_AT", "0")), os.environ.get("KILL_WHEN", "before")
    real_replace, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if calls[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    units = [WorkUnit(k, data=i) for i, k in enumerate("abcde")]

    def compute(u):
        g = torch.Generator().manual_seed(u.data)
        return torch.randn(2000, generator=g, dtype=torch.float64)

    def write(u, result):
        return [atomic_save({"v": result}, root / "units" / f"{u.key}.pt")]

    run_units(units, compute, write, JobDir(root, "job", {"n": 5}), progress=False, log=print)
""")


def _run(script: Path, root: Path, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, str(script), str(root)], capture_output=True,
                          text=True, timeout=240, env=e)


def _outputs(root: Path):
    return {p.name: torch.load(p)["v"] for p in sorted((root / "units").glob("*.pt"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    script = d / "job.py"
    script.write_text(JOB)
    ref = d / "ref"
    r = _run(script, ref)
    assert r.returncode == 0, r.stderr
    return script, _outputs(ref)


# os.replace calls of a run from scratch: unit a, manifest, unit b, manifest, ... (10 in all).
# Each run of the chain is killed at a different point of what it still has to do.
CHAINS = {
    "before-rename": [("before", 1), ("before", 2), ("before", 1), ("before", 4)],
    "after-rename": [("after", 1), ("after", 2), ("after", 3), ("after", 1)],
    "mixed": [("after", 3), ("before", 2), ("after", 4), ("before", 1)],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_killed_in_the_rename_window_resumes_to_identical_outputs(reference, tmp_path, chain):
    script, expected = reference
    root = tmp_path / "job"
    for when, k in CHAINS[chain]:
        r = _run(script, root, KILL_AT=k, KILL_WHEN=when)
        assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
        # whatever exists is whole: the unit files load and hold their unit's values
        for name, v in _outputs(root).items():
            assert torch.equal(v, expected[name]), name
    r = _run(script, root)
    assert r.returncode == 0, r.stderr
    got = _outputs(root)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    # a last run finds everything done and computes nothing
    r = _run(script, root)
    assert r.returncode == 0 and "5 of 5 units already written, 0 to go" in r.stdout, r.stdout
