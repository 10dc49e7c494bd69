"""A jobs file over several hosts: --shard K/N, or torchrun's RANK/WORLD_SIZE (two "hosts" on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import GOLDEN, fpgen_env, run_fpgen
from test_cli_errors import assert_one_line_error

from fpgen.batch import my_share, parse_shard
from fpgen.errors import ExitCode, InputError
from fpgen.parallel import free_port

LINES = 5
JOB_OPTIONS = ("--device", "cpu", "--seconds", "1.2", "--steps", "1", "--size", "16x16", "--json")


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shares_cover_every_line_once(count):
    lines = list(range(10))
    shares = [my_share(lines, (index, count)) for index in range(count)]
    assert sorted(line for share in shares for line in share) == lines
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shard_from_the_option_or_torchrun():
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert parse_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert parse_shard(None, {}) is None
    assert parse_shard("0/3", {"RANK": "1", "WORLD_SIZE": "2"}) == (0, 3)  # the option wins
    for wrong in ("4/4", "1", "a/2", "-1/2", "1/0"):
        with pytest.raises(InputError, match="--shard takes K/N"):
            parse_shard(wrong, {})


def test_shard_needs_jobs(hf_cache, tmp_path):
    assert_one_line_error(run_fpgen("generate", GOLDEN / "input.png", "--shard", "0/2", cache=hf_cache, cwd=tmp_path), ExitCode.USAGE, "--shard takes a share of a --jobs file")


def write_jobs(folder) -> None:
    lines = [{"image": str(GOLDEN / "input.png"), "prompt": "a man walks", "seed": n, "output": f"out-{n}.mp4"} for n in range(LINES)]
    (folder / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_two_hosts_under_torchrun_make_every_line_once(hf_cache, tmp_path):
    """torchrun --nnodes 2 on 127.0.0.1: each "host" runs its share; together every line once; a host run again skips its share."""
    write_jobs(tmp_path)
    port = free_port()
    hosts = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
             "--master_port", str(port), "-m", "fpgen", "generate", "--jobs", "jobs.jsonl", *JOB_OPTIONS],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fpgen_env(hf_cache, OMP_NUM_THREADS="1"),
        )  # fmt: skip
        for rank in (0, 1)
    ]
    results = [summary(subprocess.CompletedProcess(host.args, 0, *host.communicate(timeout=600))) | {"returncode": host.returncode} for host in hosts]
    assert [result["returncode"] for result in results] == [0, 0]
    made = [[job["line"] for job in result["jobs"] if job["status"] == "done"] for result in results]
    assert made == [[1, 3, 5], [2, 4]]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"out-{n}.mp4" for n in range(LINES)]
    again = summary(run_fpgen("generate", "--jobs", "jobs.jsonl", "--shard", "1/2", *JOB_OPTIONS, cache=hf_cache, cwd=tmp_path))
    assert [(job["line"], job["status"]) for job in again["jobs"]] == [(2, "skipped"), (4, "skipped")]
