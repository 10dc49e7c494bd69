from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import GOLDEN, HUB, Ran, offline_hub
from hubcache import build_hf_cache

import fpgen.cli

CASES = {case["name"]: case for case in json.loads((GOLDEN / "cases.json").read_text())["cases"]}


# Under pytest-xdist (`make test` runs two workers) the cores are split between the workers, so that a
# test's threads and its child processes' do not fight the other worker's for the same cores.
THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control (`make test &`), which ignores Ctrl-C for us
        # and every process we start. The Ctrl-C tests need it back; a Python handler, unlike SIG_IGN, is not inherited.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> Path:
    """An HF cache holding every tiny golden repo, as `fpgen download` would leave it."""
    return build_hf_cache(HUB, tmp_path_factory.mktemp("hf") / "hub")


@pytest.fixture
def offline_cache(hf_cache) -> Path:
    """Point huggingface_hub (in this process) at the golden cache, offline."""
    with offline_hub(hf_cache):
        yield hf_cache


@pytest.fixture
def cli(offline_cache, capsys, monkeypatch, tmp_path):
    """``cli(*args)``: `fpgen ARGS` run in this process (in tmp_path, the golden models offline); returns a ``Ran``.

    The same entry as the console script, without a new interpreter importing torch for every case.
    """
    monkeypatch.chdir(tmp_path)

    def run(*args) -> Ran:
        capsys.readouterr()
        code = fpgen.cli.run([str(arg) for arg in args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def fpgen_env(cache: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(THREADS)})
    if cache is not None:
        env["HF_HUB_CACHE"] = str(cache)
    env.update(extra)
    return env


def run_fpgen(*args: str, cache: Path | None = None, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real `fpgen` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "fpgen", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env or fpgen_env(cache),
    )  # fmt: skip


def fpgen_waiting(*args, wait_after: str, env: dict, cwd: Path) -> subprocess.Popen:
    """The real `fpgen ARGS` in a child process that, after reporting a line starting with ``wait_after``, waits for a signal (stop_probe.py)."""
    probe = Path(__file__).with_name("stop_probe.py")
    return subprocess.Popen(
        [sys.executable, str(probe), *map(str, args)], cwd=cwd, env=env | {"FPGEN_WAIT_AFTER": wait_after},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_models(hf_cache):
    """``get(name)``: the tiny models (float32, CPU), loaded once per test session and shared by the tests that use the API."""
    import fpgen

    loaded = {}

    def get(name: str = "framepack"):
        if name not in loaded:
            with offline_hub(hf_cache):
                loaded[name] = fpgen.load_models(name, device="cpu", dtype="float32")
        return loaded[name]

    return get


def moving_gradient(frames: int, height: int = 32, width: int = 32, start: int = 0):
    """A smooth synthetic clip, (T, H, W, 3) uint8: enough structure for H.264 to use B-frames."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([(x * 4 + 2 * t) % 256, (y * 4 + t) % 256, (x + y + 3 * t) % 256], -1).astype(np.uint8) for t in range(start, start + frames)])
