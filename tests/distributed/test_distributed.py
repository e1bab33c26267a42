"""Scale-out with torch.distributed (cnnvis_ext.distributed): 2 Gloo ranks started by torchrun.

Bit-identity holds for the same intra-op thread count per process (float reductions
are split by threads), so every run here uses OMP_NUM_THREADS=1, as torchrun does.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cnnvis_ext import top_activations
from cnnvis_ext.distributed import (JobDir, atomic_save, get_rank, get_world_size, layer_seed,
                                    merge_topk_lists, offset_seed, shard_indices)
from cnnvis_ext.models import cifar_cnn
from cnnvis_ext.vis import activation_maximization
from cnnvis_ext.vis.objectives import channel

TIMEOUT = 120
MODEL = "cnnvis_ext.models:cifar_cnn"

# A model factory for the failure tests: a forward pre-hook on conv1 that raises on
# rank CNNVIS_TEST_RAISE_RANK, or hard-exits rank 0 (a kill) when it starts its
# CNNVIS_TEST_EXIT_AT-th image (the no-grad forward that opens an inversion).
FACTORY = textwrap.dedent("""
    import os, torch
    from cnnvis_ext.models import cifar_cnn

    def make():
        m = cifar_cnn()
        state = {"n": 0}
        def hook(mod, inp):
            rank = os.environ.get("RANK", "0")
            if os.environ.get("CNNVIS_TEST_RAISE_RANK") == rank:
                raise RuntimeError(f"boom on rank {rank}")
            at = os.environ.get("CNNVIS_TEST_EXIT_AT")
            if at and rank == "0" and not torch.is_grad_enabled():
                state["n"] += 1
                if state["n"] == int(at):
                    os._exit(3)
        m.conv1.register_forward_pre_hook(hook)
        return m
""")

TOPK_SCRIPT = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    from cnnvis_ext import top_activations
    from cnnvis_ext.distributed import distributed_session, get_world_size
    from cnnvis_ext.models import cifar_cnn

    with distributed_session("cpu"):
        assert get_world_size() == 2
        torch.manual_seed(0)
        m = cifar_cnn(channels=(4, 8)).eval()
        x = torch.rand(27, 3, 32, 32)
        x[5] = x[11]  # ties across ranks: the lower index must win
        ds = torch.utils.data.TensorDataset(x)
        r = top_activations(m, "conv2", ds, 4, batch_size=4, progress=False)  # auto: distributed
        it = top_activations(m, "conv2", [x[i:i + 5] for i in range(0, 27, 5)], 4,
                             batch_size=5, progress=False)
        if dist.get_rank() == 0:
            torch.save({"map": r.__dict__, "iter": it.__dict__}, sys.argv[1])
""")


def _env(**extra):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CNNVIS_DIST_TIMEOUT="60")
    env.pop("CNNVIS_TRACEBACK", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(args, nproc, cwd, env=None, timeout=TIMEOUT):
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}"] + args
    else:
        cmd = [sys.executable] + args
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _cnnvis(sub, *args):
    return ["-m", "cnnvis_ext", sub, "--device", "cpu", "--quiet", *args]


def _pts(root: Path):
    return {p.relative_to(root).as_posix(): torch.load(p, weights_only=True)
            for p in sorted(root.rglob("*.pt"))}


# --------------------------------------------------------------------------- pure helpers

def test_rank_helpers_without_process_group():
    assert get_rank() == 0 and get_world_size() == 1


def test_shard_indices_partition():
    for n, world, block in [(10, 2, 3), (7, 3, 1), (2, 4, 2), (0, 2, 5)]:
        parts = [shard_indices(n, r, world, block=block) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        for p in parts:  # whole blocks
            assert all((i // block) % world == parts.index(p) for i in p)
    assert shard_indices(10, 1, 2, block=3) == [3, 4, 5, 9]
    with pytest.raises(ValueError, match="rank"):
        shard_indices(4, 2, 2)
    with pytest.raises(ValueError, match="block"):
        shard_indices(4, 0, 2, block=0)
    with pytest.raises(ValueError, match="n:"):
        shard_indices(-1, 0, 1)


def test_merge_topk_lists_ties_by_index():
    v0, i0 = torch.tensor([[3.0, 1.0]]), torch.tensor([[7, 2]])
    v1, i1 = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[4, 9, 0]])
    v, i, src, col = merge_topk_lists([v0, v1], [i0, i1], 4)
    assert v.tolist() == [[3.0, 3.0, 2.0, 1.0]]
    assert i.tolist() == [[4, 7, 9, 0]]
    assert src.tolist() == [[1, 0, 1, 1]] and col.tolist() == [[0, 0, 1, 2]]
    v, i, _, _ = merge_topk_lists([v0, torch.zeros(1, 0)], [i0, torch.zeros(1, 0, dtype=torch.long)], 9)
    assert v.shape == (1, 2) and i.tolist() == [[7, 2]]


def test_offset_seed_chunks_equal_one_batch():
    """A chunk rendered alone with offset_seed draws the random streams of its slice of one batch,
    so it equals that slice up to float rounding (batched kernels may sum in another order);
    bit-identity across ranks comes from the fixed chunking, which does not depend on them."""
    torch.manual_seed(0)
    m = cifar_cnn(channels=(4, 6)).eval()
    objs = [channel("conv2", c) for c in range(6)]
    s = layer_seed(5, "conv2")
    full = activation_maximization(m, objs, size=16, steps=3, seed=s).images
    parts = [activation_maximization(m, objs[a:b], size=16, steps=3,
                                     seed=offset_seed(s, a)).images for a, b in [(0, 2), (2, 5), (5, 6)]]
    torch.testing.assert_close(full, torch.cat(parts), rtol=0, atol=1e-5)
    assert offset_seed(s, 0) == s
    # and bit for bit when the chunks are the same
    again = activation_maximization(m, objs[2:5], size=16, steps=3, seed=offset_seed(s, 2)).images
    assert torch.equal(again, parts[1])


def test_job_dir_atomic_and_resume(tmp_path):
    job = JobDir(tmp_path, "j", {"a": 1})
    assert job.load() == {}
    f = atomic_save({"x": torch.ones(2)}, tmp_path / "u" / "one.pt")
    job.mark_done("one", [f])
    assert not list(tmp_path.rglob(".*tmp*"))
    again = JobDir(tmp_path, "j", {"a": 1})
    assert set(again.load()) == {"one"} and again.resumed
    f.unlink()  # a unit whose file vanished is not done
    assert JobDir(tmp_path, "j", {"a": 1}).load() == {}
    other = JobDir(tmp_path, "j", {"a": 2})
    assert other.load() == {} and other.restarted


def test_top_activations_distributed_flag_single_process():
    torch.manual_seed(0)
    m = cifar_cnn(channels=(4, 8)).eval()
    ds = torch.utils.data.TensorDataset(torch.rand(10, 3, 32, 32))
    a = top_activations(m, "conv2", ds, 3, batch_size=4, progress=False)
    b = top_activations(m, "conv2", ds, 3, batch_size=4, progress=False, distributed=True)
    for f in ("units", "values", "indices", "locations", "boxes", "patches", "projections"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


# --------------------------------------------------------------------------- 2 ranks

@pytest.fixture(scope="module")
def actmax_one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("actmax1")
    r = _run(_cnnvis("actmax", "--model", MODEL, "--layers", "conv1,conv2", "--units", "0", "1",
                     "2", "5", "6", "--steps", "3", "--size", "16", "--batch-size", "2",
                     "--out", str(out)), 0, out)
    assert r.returncode == 0, r.stderr
    return out


def test_actmax_two_ranks_bit_identical(actmax_one_rank, tmp_path):
    r = _run(_cnnvis("actmax", "--model", MODEL, "--layers", "conv1,conv2", "--units", "0", "1",
                     "2", "5", "6", "--steps", "3", "--size", "16", "--batch-size", "2",
                     "--out", str(tmp_path)), 2, tmp_path)
    assert r.returncode == 0, r.stderr
    one, two = _pts(actmax_one_rank), _pts(tmp_path)
    # runs of consecutive channels, at most 2 per unit: 0-1, 2, 5-6 for each layer
    assert sorted(one) == sorted(two) and len(one) == 6
    for k in one:
        assert torch.equal(one[k]["images"], two[k]["images"]), k
    assert (tmp_path / "actmax_conv2.png").is_file() and (tmp_path / "actmax_report.md").is_file()
    assert (tmp_path / "actmax" / "conv1" / "c0006.png").is_file()
    assert "activation maximization of 10 channels" in r.stdout
    assert r.stdout.count("wrote") == 3  # rank 0 only


def test_top_activations_two_ranks_identical(tmp_path):
    script = tmp_path / "topk.py"
    script.write_text(TOPK_SCRIPT)
    r = _run([str(script), str(tmp_path / "res.pt")], 2, tmp_path)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "res.pt", weights_only=False)
    torch.manual_seed(0)
    m = cifar_cnn(channels=(4, 8)).eval()
    x = torch.rand(27, 3, 32, 32)
    x[5] = x[11]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = top_activations(m, "conv2", torch.utils.data.TensorDataset(x), 4, batch_size=4,
                              progress=False)
        ref_it = top_activations(m, "conv2", [x[i:i + 5] for i in range(0, 27, 5)], 4,
                                 batch_size=5, progress=False)
    finally:
        torch.set_num_threads(threads)
    for res, want in ((got["map"], ref), (got["iter"], ref_it)):
        for f in ("units", "values", "indices", "locations", "boxes", "patches"):
            assert torch.equal(res[f], getattr(want, f)), f
        torch.testing.assert_close(res["projections"], want.projections)
    for row in ref.indices.tolist():  # x[5] == x[11]: the lower index ranks first
        assert 11 not in row or row.index(5) < row.index(11)


def _invert_args(out, factory_dir):
    return _cnnvis("invert", "--model", "fac:make", "--num-images", "5",
                   "--layers", "conv1,conv2", "--steps", "3", "--out", str(out))


def test_invert_killed_and_restarted(tmp_path):
    (tmp_path / "fac.py").write_text(FACTORY)
    ref, out = tmp_path / "ref", tmp_path / "out"
    pp = dict(PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = _run(_invert_args(ref, tmp_path), 0, tmp_path, env=_env(**pp))
    assert r.returncode == 0, r.stderr
    # rank 0 dies when it starts its 2nd image: after round 1 (images 0, 1) is written
    r = _run(_invert_args(out, tmp_path), 2, tmp_path, env=_env(CNNVIS_TEST_EXIT_AT=2, **pp))
    assert r.returncode != 0
    partial = _pts(out)
    assert sorted(partial) == ["invert/input0.pt", "invert/input1.pt"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    r = _run(_invert_args(out, tmp_path), 2, tmp_path, env=_env(**pp))
    assert r.returncode == 0, r.stderr
    assert "resuming: 2 of 5 units already written" in r.stdout
    a, b = _pts(ref), _pts(out)
    assert sorted(a) == sorted(b) and len(a) == 5
    for k in a:
        assert torch.equal(a[k]["reconstructions"], b[k]["reconstructions"]), k
    assert (out / "invert_input4.png").is_file()


def test_failing_rank_fails_the_job(tmp_path):
    (tmp_path / "fac.py").write_text(FACTORY)
    pp = dict(PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = _run(_invert_args(tmp_path / "out", tmp_path), 2, tmp_path,
             env=_env(CNNVIS_TEST_RAISE_RANK=1, **pp), timeout=90)
    assert r.returncode != 0
    assert "boom on rank 1" in r.stderr
    assert "rank 1 failed" in r.stderr  # what rank 0 says


def test_job_dir_redoes_corrupted_units_and_sweeps_temporaries(tmp_path):
    from cnnvis_ext.distributed import WorkUnit, run_units

    def write(unit, result):
        return [atomic_save({"v": result}, tmp_path / f"{unit.key}.pt")]

    units = [WorkUnit(k, data=i) for i, k in enumerate(["a", "b", "c"])]
    computed = []

    def compute(u):
        computed.append(u.key)
        return torch.full((64,), float(u.data))

    run_units(units, compute, write, JobDir(tmp_path, "j", {"n": 3}), progress=False)
    assert computed == ["a", "b", "c"]
    # a truncated unit file, a same-size corrupted one, and a temporary file of a killed rename
    (tmp_path / "a.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:50])
    data = bytearray((tmp_path / "b.pt").read_bytes())
    data[-20] ^= 0xFF
    (tmp_path / "b.pt").write_bytes(bytes(data))
    (tmp_path / ".c.pt.abc123.tmp").write_bytes(b"partial")
    logs = []
    computed.clear()
    run_units(units, compute, write, JobDir(tmp_path, "j", {"n": 3}), progress=False,
              log=logs.append)
    assert computed == ["a", "b"]
    assert any("'a'" in m and "a.pt" in m and "bytes instead of" in m for m in logs)
    assert any("'b'" in m and "content differs" in m for m in logs)
    assert any("removed 1 temporary file" in m for m in logs)
    assert not (tmp_path / ".c.pt.abc123.tmp").exists()
    assert torch.load(tmp_path / "a.pt")["v"][0] == 0 and torch.load(tmp_path / "b.pt")["v"][0] == 1
