"""The benchmark harness (``benchmarks/``): its correctness gate, its shape recording, its
tables, its PyTorch counterparts and PyTorch model, and a tiny end-to-end run.

Nothing here measures speed: timings only need to exist and be positive.  Tolerances: the
gate's own (``benchmarks.run.TOLERANCE``, 1e-5 relative for float32); the PyTorch model
against tinyseg's in float64: 1e-9 relative (same weights, same arithmetic up to summation
order).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # ``benchmarks`` is a top-level directory, not installed

from benchmarks import cases, run  # noqa: E402


def conv_call(n=2, c=3, h=6, w=6, o=4, k=3, stride=1, padding=1, dtype="float32"):
    """A call as ``cases.record_step`` records it: conv2d_forward on small shapes."""
    return {"kernel": "conv.conv2d_forward",
            "args": {"x": {"shape": [n, c, h, w], "dtype": dtype},
                     "weight": {"shape": [o, c, k, k], "dtype": dtype},
                     "bias": {"shape": [o], "dtype": dtype},
                     "stride": {"value": stride}, "padding": {"value": padding}}}


@pytest.fixture(scope="module")
def tiny_record():
    """The kernel calls of one training step of the tiny preset on 16×16 images."""
    return cases.record_step("tiramisu_tiny", 16)


# -- the correctness gate -------------------------------------------------------------------

def test_gate_accepts_the_kernel_and_reports_a_time():
    r = run.bench_kernel(conv_call(), reps=2, min_rep_seconds=0.0)
    assert r["status"] == "ok"
    assert r["check"]["ok"] and r["check"]["error"] <= run.TOLERANCE["float32"]
    assert r["fast"]["median"] > 0 and r["ref"]["median"] > 0
    assert r["flops"] == 2.0 * 2 * 4 * 6 * 6 * 3 * 9


@pytest.mark.parametrize("how", ["scaled", "shifted", "wrong_shape", "nan"])
def test_gate_refuses_a_kernel_that_disagrees(how):
    from tinyseg.reference.conv import conv2d_forward as ref

    def wrong(x, weight, bias, stride, padding):
        y = ref(x, weight, bias, stride, padding)
        if how == "scaled":
            return y * 1.001          # 1e-3 relative: ten times the tolerance
        if how == "shifted":
            y = y.copy()
            y[0, 0, 0, 0] += 0.01 * np.abs(y).max()
            return y
        if how == "wrong_shape":
            return y[:, :, 1:]
        y = y.copy()
        y[-1, -1, -1, -1] = np.nan
        return y

    r = run.bench_kernel(conv_call(), reps=2, fast=wrong)
    assert r["status"] == "refused"
    assert not r["check"]["ok"]
    assert "fast" not in r and "ref" not in r      # no time is reported


def test_gate_refuses_a_wrong_in_place_optimiser_step():
    call = {"kernel": "optim.rmsprop_step",
            "args": {"param": {"list": [{"shape": [5, 3], "dtype": "float32"},
                                        {"shape": [4], "dtype": "float32"}]},
                     "lr": {"value": 1e-3}, "alpha": {"value": 0.99},
                     "eps": {"value": 1e-8}, "weight_decay": {"value": 1e-4}}}
    assert run.bench_kernel(call, reps=2)["status"] == "ok"

    def forgets_the_last_array(param, grad, square_avg, lr, alpha, eps, weight_decay):
        from tinyseg.reference.optim import rmsprop_step
        for p, g, v in list(zip(param, grad, square_avg))[:-1]:
            rmsprop_step(p, g, v, lr, alpha, eps, weight_decay)

    r = run.bench_kernel(call, reps=2, fast=forgets_the_last_array)
    assert r["status"] == "refused" and "fast" not in r


def test_compare_rules():
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    ok = run.compare([a, None], [a + 1e-6, np.zeros(3)], tol=1e-4, missing_ok=True)
    assert ok["ok"] and 0 < ok["error"] < 1e-5          # None outputs are skipped (PyTorch)
    # a kernel that leaves out an output (a gradient) was skipped, and timed
    assert not run.compare([a, None], [a, np.zeros(3)], tol=1e-4)["ok"]
    assert run.compare([a, None], [a, None], tol=1e-4)["ok"]     # None on both sides
    # a weight gradient 1.00005 times too large passed the 1e-4 of float32 before
    assert not run.compare([a * np.float32(1.00005)], [a], tol=run.TOLERANCE["float32"])["ok"]
    assert not run.compare([a], [a * 1.01], tol=1e-4)["ok"]
    assert not run.compare([a], [a.T], tol=1e-4)["ok"]   # shapes differ
    assert not run.compare([a, a], [a], tol=1e-4)["ok"]  # number of outputs differs
    i = np.arange(6, dtype=np.int8)
    assert run.compare([i], [i.copy()], tol=1e-4)["ok"]
    j = i.copy()
    j[0] = 5
    assert not run.compare([i], [j], tol=1.0)["ok"]      # integers must match exactly
    assert run.compare([np.zeros(3)], [np.zeros(3)], tol=0.0)["ok"]
    assert run.compare([1.0000001], [1.0], tol=1e-6)["ok"]  # scalar outputs (the loss)


def test_measure_reports_positive_statistics():
    calls = []
    t = run.measure(lambda: calls.append(1), reps=4, min_rep_seconds=0.001)
    assert t["reps"] == 4 and t["number"] >= 1
    assert 0 < t["min"] <= t["p25"] <= t["median"] <= t["p75"] <= t["max"]
    assert len(calls) == 1 + 4 * t["number"]                # one calibration call
    calls.clear()
    t = run.measure(lambda: calls.append(1), reps=3, min_rep_seconds=0.0)
    assert len(calls) == 3 and t["number"] == 1             # whole steps: no calibration


# -- shapes from the model --------------------------------------------------------------------

def test_recorded_calls_follow_the_architecture(tiny_record):
    from tinyseg.tiramisu import tiramisu_tiny
    model = tiramisu_tiny()
    cfg = model.config
    groups = cases.group_calls(tiny_record["calls"], batch=4)
    dense_layers = sum(cfg["layers"])
    assert sum(n for _, n in groups["conv3x3 fwd"]) == dense_layers + 1   # + first conv
    assert sum(n for _, n in groups["conv3x3 bwd"]) == dense_layers + 1
    assert sum(n for _, n in groups["convT3x3s2 fwd"]) == cfg["pools"]
    assert sum(n for _, n in groups["maxpool fwd"]) == cfg["pools"]
    # the memory-efficient layers compute BN + ReLU twice: forward, and again in backward
    assert sum(n for _, n in groups["bn+relu fwd"]) == 2 * (dense_layers + cfg["pools"])
    assert len(groups["softmax CE"]) == 1 and len(groups["rmsprop step"]) == 1
    sizes = groups["rmsprop step"][0][0]["args"]["param"]["list"]
    assert sum(int(np.prod(d["shape"])) for d in sizes) == model.num_parameters()
    # the first down block: dense layer l sees first_filters + l·k channels at full size
    k, m = cfg["growth_rate"], cfg["first_filters"]
    shapes = [c["args"]["x"]["shape"] for c, _ in groups["conv3x3 fwd"]]
    first_block = shapes[1:1 + cfg["layers"][0]]
    assert first_block == [[4, m + l * k, 16, 16] for l in range(cfg["layers"][0])]
    # every batched argument got the new batch
    for op, group in groups.items():
        for call, _ in group:
            for name in ("x", "dout", "logits"):
                if name in call["args"]:
                    assert call["args"][name]["shape"][0] == 4, (op, name)


def test_recorded_views_are_rebuilt_as_views(tiny_record):
    stats = [c for c in tiny_record["calls"] if c["kernel"] == "norm.batchnorm2d_stats"]
    views = [c for c in stats if "base_channels" in c["args"]["x"]]
    assert views, "the shared-buffer dense blocks pass channel slices of their buffer"
    kw, _ = cases.make_inputs(cases.with_batch(views[0], 2))
    x = kw["x"]
    assert not x.flags.c_contiguous
    assert x.base is not None and x.base.shape[1] == views[0]["args"]["x"]["base_channels"]


def test_naive_blocks_record_concatenations():
    rec = cases.record_step("tiramisu_tiny", 16, memory_efficient=False)
    groups = cases.group_calls(rec["calls"])
    assert "concat" in groups and "bn fwd" in groups
    call = groups["concat"][0][0]
    kw, _ = cases.make_inputs(call)
    fast, ref = cases.implementations(call)
    np.testing.assert_array_equal(fast(kw["xs"]), ref(kw["xs"]))


def test_every_recorded_kernel_passes_the_gate(tiny_record):
    for op, group in cases.group_calls(tiny_record["calls"], batch=2).items():
        call = group[0][0]
        r = run.bench_kernel(call, reps=1, min_rep_seconds=0.0, time_ref=False)
        assert r["status"] == "ok", (op, r["check"])


def test_training_presets_come_from_tinyseg_train():
    from tinyseg.train import PRESETS
    p = cases.training_presets()
    assert set(p) == set(PRESETS)
    for name, v in p.items():
        assert (v["model"], v["size"], v["batch_size"]) == (
            PRESETS[name]["model"], PRESETS[name]["size"], PRESETS[name]["batch_size"])


# -- tables -----------------------------------------------------------------------------------

def test_markdown_table_format():
    t = run.markdown_table(["a", "b"], [["x", "1"], ["y|z", "22"]])
    assert t.splitlines() == ["| a | b |", "| --- | --: |", "| x | 1 |", "| y\\|z | 22 |"]
    with pytest.raises(ValueError, match="row has 1 cells, header 2"):
        run.markdown_table(["a", "b"], [["only one"]])


def test_number_formats():
    assert run._fmt_ms(None) == "n/a" and run._fmt_ms(float("nan")) == "n/a"
    assert run._fmt_ms(1.2345) == "1,234" and run._fmt_ms(0.012345) == "12.3"
    assert run._fmt_ms(0.0012345) == "1.23" and run._fmt_ms(0.00012345) == "0.123"
    assert run._fmt_ratio(3.0, 2.0) == "1.50×" and run._fmt_ratio(1.0, None) == "n/a"
    assert run._fmt_bytes(3 * 2 ** 20) == "3 MiB" and run._fmt_bytes(None) == "n/a"


def _group(op, status="ok", ts=0.003, th=0.002, cases_=1, distinct=1):
    g = {"op": op, "preset": "p", "model": "m", "size": 32, "batch": 4, "calls_per_step": 3,
         "distinct": distinct, "cases": [{}] * cases_, "status": status, "other_cores": 0.6,
         "check_error": 2e-7 if status == "ok" else 0.5, "tol": 1e-4}
    if status == "ok":
        g.update({"tinyseg_s": ts, "spread": 0.05, "ref_s": 0.03, "torch_s": th,
                  "flops": 3e7, "bytes": 1e6})
    return g


def test_kernel_rows_refused_and_missing_torch():
    rows = run.kernel_rows([_group("conv3x3 fwd"), _group("conv3x3 bwd", status="refused"),
                            _group("bn stats", th=None)], peak_gflops=100.0)
    assert all(len(r) == len(run.KERNEL_HEADER) for r in rows)
    ok, refused, no_torch = rows
    assert ok[5].startswith("3.00") and ok[6] == "10.0" and ok[7] == "10%"
    assert ok[9] == "30.0" and ok[10] == "10.0×" and ok[11] == "2.00" and ok[12] == "1.50×"
    assert "REFUSED" in refused[4] and all(c == "—" for c in refused[5:-1])
    assert ok[13] == refused[13] == "0.6 ⚠"      # other processes were busy: flagged
    assert no_torch[11] == "n/a" and no_torch[12] == "n/a"


def test_targets_verdicts():
    results = {
        "kernels": [{"threads": 2, "groups": [_group("conv3x3 fwd", ts=0.004, th=0.002),
                                              _group("conv3x3 bwd", ts=0.004, th=0.004)]}],
        "models": [{"preset": "small", "model": "tiramisu_small", "size": 64, "batch": 8,
                    "threads": 2,
                    "tinyseg": {"step": {"median": 1.0}, "peak_rss": 100},
                    "torch": {"step": {"median": 1.0}, "peak_rss": 200}}],
        "compile": {"cold": {"runs": [{"dtype": "float32", "kernels_total": 70.0}]}},
    }
    t = {x["what"]: x for x in run.targets(results)}
    conv = t["conv 3×3 fwd+bwd, p, batch 4, 2 thread(s)"]
    assert conv["value"] == pytest.approx(8 / 6) and conv["ok"]
    step = [v for k, v in t.items() if k.endswith(": time")][0]
    mem = [v for k, v in t.items() if k.endswith(": peak memory")][0]
    assert step["ok"] and mem["ok"] and mem["value"] == 0.5
    comp = [v for k, v in t.items() if "compilation" in k]
    assert comp and not comp[0]["ok"]
    cells = run._target_cells(comp[0])
    assert cells[1] == "70.0 s" and "missed" in cells[3]
    # presets the issue sets no target for are in the tables, not in the verdicts
    results["models"].append(dict(results["models"][0], preset="tiny"))
    assert not [k for k in run.targets(results) if k["what"].startswith("training step, tiny")]
    # without PyTorch figures there is no verdict
    results["models"][0]["torch"] = None
    assert all(x["ok"] is None for x in run.targets(results) if "training step" in x["what"])


@pytest.mark.parametrize("flags, says", [
    (["--batches", "0"], "--batches must be at least 1"),      # a worker died with SIGFPE
    (["--reps", "0"], "--reps must be at least 1"),            # was silently 5
    (["--model-reps", "-1"], "--model-reps must be at least 1"),
    (["--model-budget", "0"], "--model-budget must be a number of seconds > 0"),
    (["--max-shapes", "0"], "--max-shapes must be at least 1"),     # 0 meant "all shapes"
    (["--threads", "0"], "--threads and --blas-threads must be at least 1"),
    (["--max-seconds", "-1"], "--max-seconds must be a number of seconds > 0"),  # accepted
])
def test_bad_flag_values_exit_1_with_a_message(flags, says, capsys):
    """Values that parse but cannot work: one line, exit 1, as tinyseg's commands (exit 2 and
    a usage line before, which the README keeps for flags that do not parse)."""
    from tinyseg.cli import run_main
    assert run_main(run.main, "benchmarks", flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("benchmarks: error: ") and says in err and "usage" not in err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    from tinyseg.cli import run_main
    (tmp_path / "f").write_text("")
    assert run_main(run.main, "benchmarks", ["--out", str(tmp_path / "f")]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    # was a NotADirectoryError traceback
    assert run_main(run.main, "benchmarks", ["--out", str(tmp_path / "f" / "sub")]) == 1
    assert f"{tmp_path / 'f'} is a file" in capsys.readouterr().err


def test_ops_matching_nothing_is_an_error_not_an_empty_report(tmp_path):
    """A misspelt --ops wrote an empty report and exited 0."""
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--quiet", "--out", str(tmp_path),
           "--ops", "conv3x3 fwdd", "--parts", "kernels", "--no-torch"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "no op name contains any of ['conv3x3 fwdd'] (ops: " in proc.stderr
    assert "conv3x3 fwd," in proc.stderr and list(tmp_path.iterdir()) == []


def test_thread_environment(monkeypatch):
    monkeypatch.delenv("TINYSEG_BLAS_THREADS", raising=False)
    env = run.thread_env(3, "torch")
    for var in run.THREAD_VARS:
        assert env[var] == "3"
    assert env.get("OPENBLAS_CORETYPE") == os.environ.get("OPENBLAS_CORETYPE")  # untouched
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    # tinyseg: numba gets the threads, OpenBLAS tinyseg's own count (1, see tinyseg/cli.py)
    env = run.thread_env(3, "tinyseg")
    assert env["NUMBA_NUM_THREADS"] == "3" and env["OPENBLAS_NUM_THREADS"] == "1"
    env = run.thread_env(2, "tinyseg", blas_threads=2)
    assert env["OPENBLAS_NUM_THREADS"] == "2" == env["TINYSEG_BLAS_THREADS"]


def test_pytorch_workers_run_with_pytorchs_own_openmp_default(monkeypatch):
    """Importing tinyseg sets OMP_WAIT_POLICY=PASSIVE (sleeping workers, its own policy); the
    PyTorch workers inherited it, so PyTorch was timed with a setting it does not use."""
    import tinyseg
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(tinyseg, "OMP_WAIT_POLICY_GIVEN", None)       # tinyseg set it
    assert "OMP_WAIT_POLICY" not in run.thread_env(2, "torch")
    assert run.thread_env(2, "tinyseg")["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr(tinyseg, "OMP_WAIT_POLICY_GIVEN", "PASSIVE")  # the user set it
    assert run.thread_env(2, "torch")["OMP_WAIT_POLICY"] == "PASSIVE"


def test_inside_conv_rows_at_two_threads_are_thread_time():
    """With two threads the time inside the convolutions is summed over both threads and
    could read "71 % of the step" where the convolutions took 50 %."""
    prof = {"ops": {"conv3x3 fwd": {"seconds": 0.5}}, "glue": 0.1, "total": 1.0,
            "conv_inner": {"matmul": 0.7}}
    rows = [{"preset": "small", "batch": 8, "threads": t, "tinyseg": {"profile": prof}}
            for t in (1, 2)]
    table = run.profile_table(rows)
    line = next(l for l in table.splitlines() if "inside conv: BLAS matmul" in l)
    assert "700 ms (70%)" in line and "700 thread-ms" in line


def test_other_processes_cpu_accounting():
    # (machine busy seconds, our processes' seconds, wall clock)
    assert run.other_cores((10.0, 4.0, 100.0), (13.0, 5.0, 101.0)) == pytest.approx(2.0)
    assert run.other_cores((10.0, 4.0, 100.0), (11.0, 5.0, 101.0)) == 0.0  # idle machine
    assert run.other_cores(None, (1.0, 1.0, 1.0)) is None
    assert run._fmt_cores(0.1) == "0.1" and run._fmt_cores(1.2) == "1.2 ⚠"
    assert run._fmt_cores(None) == "n/a"
    snap = run.cpu_snapshot([os.getpid()])
    if snap is None:
        pytest.skip("no /proc on this system")
    busy, own, _ = snap
    assert busy >= 0 and own > 0


def test_peak_rss_sees_a_large_allocation():
    with run.PeakRSS() as m:
        a = np.ones(64 * 2 ** 20 // 8)   # 64 MiB, touched
        del a
    if m.peak is None:
        pytest.skip("this kernel cannot reset the resident-set high-water mark")
    assert m.peak >= 60 * 2 ** 20


# -- PyTorch ------------------------------------------------------------------------------------

def test_torch_counterparts_compute_the_same_thing(torch, tiny_record):
    """Every op's PyTorch operation, on the op's smallest recorded shape, agrees with the
    NumPy reference (so the PyTorch column times the same job)."""
    for op, group in cases.group_calls(tiny_record["calls"], batch=2).items():
        call = min(group, key=lambda cn: cases.work(cn[0])[1])[0]
        r = run.bench_torch(torch, call, reps=1, check=True, min_rep_seconds=0.0)
        assert r["status"] == "ok", (op, r.get("check"))


def test_torch_counterpart_of_concat(torch):
    rec = cases.record_step("tiramisu_tiny", 16, memory_efficient=False)
    call = cases.group_calls(rec["calls"], batch=2)["concat"][0][0]
    assert run.bench_torch(torch, call, reps=1, check=True)["status"] == "ok"


@pytest.mark.parametrize("preset", ["tiramisu_tiny", "tiramisu_small", "fc_densenet56",
                                    "fc_densenet67", "fc_densenet103"])
def test_torch_tiramisu_has_tinyseg_names_and_shapes(torch, preset):
    from benchmarks import torch_tiramisu as tt
    from tinyseg.tiramisu import PRESETS
    model = PRESETS[preset]()
    net = tt.preset(preset)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == theirs
    tt.from_tinyseg(model)  # strict load by name


def test_torch_tiramisu_computes_what_tinyseg_computes(torch):
    """Same weights, float64, training mode without dropout (batch statistics): the same
    logits and the same gradients; a height that is not a multiple of 2**pools checks the
    padding too."""
    from benchmarks import torch_tiramisu as tt
    from tinyseg.tiramisu import tiramisu_tiny
    model = tiramisu_tiny(dropout=0.0, dtype=np.float64, rng=np.random.default_rng(3))
    net = tt.from_tinyseg(model)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 12, 16))
    dlogits = rng.standard_normal((2, 2, 12, 16))
    model.train()
    net.train()
    logits = model.forward(x)
    model.backward(dlogits)
    tx = torch.from_numpy(x)
    out = net(tx)
    out.backward(torch.from_numpy(dlogits))
    scale = np.abs(logits).max()
    assert np.abs(out.detach().numpy() - logits).max() <= 1e-9 * scale
    grads = {name: g for name, _, g in model.named_parameters()}
    # relative to the largest gradient of the network: a conv bias followed by a batch norm
    # has a zero gradient in exact arithmetic (1e-15 noise on both sides)
    gscale = max(np.abs(g).max() for g in grads.values())
    for name, p in net.named_parameters():
        g = p.grad.numpy()
        assert np.abs(g - grads[name]).max() <= 1e-9 * gscale, name


# -- the command ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_end_to_end_run(tmp_path):
    """``python -m benchmarks --quick`` on a few ops: JSON and Markdown written, every row
    checked, thread settings in force in the workers, whole-model rows present."""
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--quiet", "--out", str(tmp_path),
           "--ops", "conv3x3 fwd", "rmsprop", "--model-reps", "1", "--no-profile"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "quick.json").read_text())
    md = (tmp_path / "quick.md").read_text()
    (per,) = res["kernels"]
    assert per["threads"] == 1
    assert per["info"]["tinyseg"]["threads"]["numba"] == 1
    assert per["info"]["tinyseg"]["threads"]["openblas"] == 1
    ops = {g["op"] for g in per["groups"]}
    assert ops == {"conv3x3 fwd", "rmsprop step"}
    for g in per["groups"]:
        assert g["status"] == "ok" and g["tinyseg_s"] > 0
        assert g["check_error"] <= run.TOLERANCE["float32"]
    (model_row,) = res["models"]
    assert model_row["preset"] == "tiny" and model_row["tinyseg"]["step"]["median"] > 0
    assert "| conv3x3 fwd |" in md and "## One training step, 1 thread(s)" in md
    if res["torch"]:
        assert per["info"]["torch"]["threads"]["torch"] == 1
        assert all(g["torch_s"] and g["torch_s"] > 0 for g in per["groups"])
        assert model_row["torch"]["step"]["median"] > 0
    else:
        assert "n/a" in md


def test_provisional_when_a_row_was_shared(tmp_path, monkeypatch):
    """The results are called provisional exactly when some row saw other processes use more
    than BUSY_CORES (or no row measured it)."""
    monkeypatch.setattr(run, "to_markdown", lambda r: f"provisional={r['provisional']}")
    monkeypatch.setattr(run, "summary_markdown", lambda r, name: "")
    def results(busy):
        return {"date": "d", "command": "c", "machine": {}, "torch": False, "options": {},
                "presets": {}, "kernels": [], "source": {},
                "models": [{"preset": "tiny", "model": "tiramisu_tiny", "size": 32, "batch": 4,
                            "threads": 1, "tinyseg": {"other_cores": busy}, "torch": None}]}
    assert run.busiest_row(results(0.1)) == 0.1
    quiet, shared, unknown = results(0.1), results(0.6), results(None)
    for r in (quiet, shared, unknown):
        run._write(r, tmp_path, "t")
    assert not quiet["provisional"] and shared["provisional"] and unknown["provisional"]
    run._write(shared, tmp_path, "t")
    assert (tmp_path / "t.md").read_text().strip() == "provisional=True"
    assert json.loads((tmp_path / "t.json").read_text())["provisional"] is True


def test_benchmark_concat_reference_three_inputs():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, c, 3, 4)).astype(np.float32) for c in (2, 3, 5)]
    np.testing.assert_array_equal(cases.concat_reference(xs), np.concatenate(xs, axis=1))


def test_benchmark_work_of_conv_transpose_counts_input_pixels():
    call = {"kernel": "conv.conv_transpose2d_forward",
            "args": {"x": {"shape": [2, 3, 5, 4], "dtype": "float32"},
                     "weight": {"shape": [3, 7, 3, 3], "dtype": "float32"},
                     "stride": {"value": 2}, "padding": {"value": 0},
                     "output_padding": {"value": 0}}}
    flops, _ = cases.work(call)
    # every input value stamps a 3x3 kernel onto 7 output maps: 2 flops per multiply-add
    assert flops == 2.0 * 2 * 3 * 5 * 4 * 7 * 3 * 3
