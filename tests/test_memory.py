"""tinyseg.memory: the tracemalloc peak of a call, and byte formatting."""
import numpy as np

from tinyseg.memory import format_bytes, peak_memory


def test_peak_memory_counts_arrays_alive_at_the_worst_moment():
    def f():
        a = np.ones(1_000_000)      # 8 MB
        b = np.ones(500_000)        # + 4 MB: peak 12 MB
        del a, b
        return np.ones(250_000)     # 2 MB returned

    result, peak = peak_memory(f)
    assert result.nbytes == 2_000_000
    assert 12_000_000 <= peak < 12_100_000


def test_peak_memory_ignores_what_existed_before():
    keep = np.ones(2_000_000)
    _, peak = peak_memory(lambda: np.zeros(10).sum())
    assert peak < 100_000
    del keep


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024 ** 2) == "3 MiB"
    assert format_bytes(3.5 * 1024 ** 3) == "3.5 GiB"


def test_command_compares_both_dense_blocks(capsys):
    from tinyseg.cli import run_main
    from tinyseg.memory import main

    assert main(["--model", "tiramisu_tiny", "--size", "32", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "shared buffer dense blocks:" in out and "naive dense blocks:" in out
    ratio = float(out.strip().splitlines()[-1].split()[-1])
    assert 0 < ratio < 0.5
    assert run_main(main, "tinyseg.memory", ["--model", "tiramisu_tiny", "--size", "0"]) == 1
    assert capsys.readouterr().err == "tinyseg.memory: error: --size must be at least 1, got 0\n"
    assert run_main(main, "tinyseg.memory", ["--model", "tiramisu_tiny", "--seed", "-1"]) == 1
    assert "--seed must be >= 0" in capsys.readouterr().err
    # a side over 1024, and an input too small for batch statistics (it was a traceback)
    assert run_main(main, "tinyseg.memory", ["--size", "5000"]) == 1
    assert capsys.readouterr().err == "tinyseg.memory: error: --size must be at most 1024, got 5000\n"
    assert run_main(main, "tinyseg.memory", ["--model", "tiramisu_tiny", "--size", "7",
                                             "--batch", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyseg.memory: error: Tiramisu: an input of shape (1, 3, 7, 7)")
    assert len(err.splitlines()) == 1


def test_peak_is_counted_from_what_was_traced_before_the_call():
    """With tracing already on and 16 MB held, a call that allocates 1 MB peaks at 1 MB;
    tracing is left on, as it was found."""
    import tracemalloc
    tracemalloc.start()
    try:
        held = np.ones(2_000_000)                                      # 16 MB
        _, peak = peak_memory(lambda: np.ones(125_000).sum())          # 1 MB
        assert 1_000_000 <= peak < 1_100_000
        assert tracemalloc.is_tracing()
        del held
    finally:
        tracemalloc.stop()
