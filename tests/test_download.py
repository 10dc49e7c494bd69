"""The real `fpgen download` against a Hub on 127.0.0.1 (tests/hubserver.py) serving ../shared/golden/hub,
then `fpgen generate` on what it fetched, with no Hub to talk to."""

from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import GOLDEN, HUB, fpgen_env, run_fpgen
from helpers import assert_one_line_error
from hubcache import fake_commit
from hubserver import FakeHub

from fpgen.errors import ExitCode

FRAMEPACK_REPOS = ("lllyasviel/FramePackI2V_HY", "hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl")
DECOYS = ("transformer/", "scheduler/", "image_embedder/", "model_index.json")
TOKEN = "hf_fpgenTestToken0123456789abcdef"
GENERATE = ("--size", "80x112", "--seconds", "1", "--steps", "2", "--device", "cpu")

pytestmark = pytest.mark.slow  # every test runs `fpgen` processes against a Hub served from this process


@functools.cache
def golden_files(*repos: str) -> dict[str, bytes]:
    """'owner/name/path' -> content of every file of ``repos`` that FramePack uses (all but the decoys); read on first use."""
    files = {}
    for repo in repos:
        for file in sorted(p for p in (HUB / repo).rglob("*") if p.is_file()):
            path = file.relative_to(HUB / repo).as_posix()
            if not path.startswith(DECOYS):
                files[f"{repo}/{path}"] = file.read_bytes()
    return files


def needed() -> dict[str, bytes]:
    """The files of the default model (framepack)."""
    return golden_files(*FRAMEPACK_REPOS)


def hub_env(home: Path, endpoint: str, cache: Path, **extra: str) -> dict[str, str]:
    """Online, against ``endpoint``, with a private HF_HOME: no token but the test's own."""
    online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_HOME": str(home)}
    return fpgen_env(cache, **(online | extra))


def cached(cache: Path, name: str) -> Path:
    """Where huggingface_hub's cache shows the file ``owner/name/path``."""
    owner, repo, path = name.split("/", 2)
    return cache / f"models--{owner}--{repo}" / "snapshots" / fake_commit(f"{owner}/{repo}") / path


def download(env: dict, *args: str):
    return run_fpgen("download", *args, env=env, timeout=120)


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """`fpgen download --json` of the default model into an empty cache, and the Hub that served it."""
    tmp = tmp_path_factory.mktemp("downloaded")
    with FakeHub(HUB) as hub:
        env = hub_env(tmp / "home", hub.url, tmp / "hf" / "hub")
        proc = download(env, "--json")
        yield SimpleNamespace(hub=hub, env=env, cache=tmp / "hf" / "hub", proc=proc, served=len(hub.log))


def test_download_fetches_exactly_the_files_the_model_needs(downloaded):
    assert downloaded.proc.returncode == 0, downloaded.proc.stderr
    plan = json.loads(downloaded.proc.stdout)
    assert {f"{f['repo']}/{f['path']}" for f in plan["files"]} == set(needed())
    assert plan["total_bytes"] == plan["download_bytes"] == sum(map(len, needed().values()))
    # Each needed file was sent whole, exactly once; nothing else was asked for, not even its metadata.
    assert downloaded.hub.content_bytes() == {name: len(data) for name, data in needed().items()}
    asked = [served.path for served in downloaded.hub.log]
    assert not [path for path in asked if any(decoy in path for decoy in DECOYS) or "FramePack_F1" in path]
    for name, data in needed().items():
        assert cached(downloaded.cache, name).read_bytes() == data, name


def test_second_download_transfers_nothing(downloaded):
    since = len(downloaded.hub.log)
    proc = download(downloaded.env, "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["download_bytes"] == 0 and all(f["already_present"] for f in plan["files"])
    assert downloaded.hub.content_bytes(since) == {}


def test_models_lists_presence_and_size_on_disk(downloaded):
    proc = run_fpgen("models", "--json", env=downloaded.env)
    assert proc.returncode == 0, proc.stderr
    listing = {row["name"]: row for row in json.loads(proc.stdout)["models"]}
    assert listing["framepack"]["complete"] and listing["framepack"]["size_bytes"] == sum(map(len, needed().values()))
    f1 = listing["framepack-f1"]
    assert not f1["complete"] and f1["missing"] == ["lllyasviel/FramePack_F1_I2V_HY_20250503"]
    assert f1["size_bytes"] == sum(map(len, golden_files(*FRAMEPACK_REPOS[1:]).values())) and f1["download_command"] == "fpgen download framepack-f1"
    assert json.loads(proc.stdout)["total_bytes"] == listing["framepack"]["size_bytes"]  # the shipped demo is not in the cache's total
    demo = listing["demo"]
    assert demo["shipped"] and demo["complete"] and not listing["framepack"]["shipped"] and demo["download_command"] is None
    assert 20e6 < demo["size_bytes"] < 40e6  # the package's weights, as demo/README.md records them


def test_the_shipped_demo_downloads_nothing_and_runs_without_a_picture(tmp_path):
    from fpgen.config import resolve
    from fpgen.registry import MODELS
    from fpgen.spec import JobSpec, Settings

    proc = download(fpgen_env(tmp_path / "hf"), "demo", "--json")  # HF_HUB_OFFLINE=1: no network is needed at all
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"models": ["demo"], "download_bytes": 0, "shipped": True}, proc.stderr
    job = resolve(JobSpec(tmp_path / "out.mp4", Settings(prompt="the camera zooms in", seconds=1.0), model="demo"))
    assert job.spec.image == MODELS["demo"].example and job.pictures.size == (128, 128)  # the demo's picture and trained size
    assert job.spec.model == "demo" and job.settings.distilled_guidance == 1.0  # recorded by name (portable); the family's guidance


def test_generate_after_download_never_touches_the_network(downloaded, tmp_path):
    # HF_HUB_OFFLINE unset and HF_ENDPOINT on a socket that never answers: a Hub that has gone away.
    # Any connection attempt would be left queued on it.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = downloaded.env | {"HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        proc = run_fpgen("generate", GOLDEN / "input.png", *GENERATE, "-o", tmp_path / "out.mp4", env=env, cwd=tmp_path)
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.accept()
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_connection_cut_part_way_resumes_from_where_it_was(tmp_path):
    # A transformer large enough for huggingface_hub to keep what it received before the cut (it
    # writes in 10 MiB chunks), served next to the golden repos as a Hub repo id model.
    weights = os.urandom(24 << 20)
    big = tmp_path / "extra" / "tester" / "big-finetune"
    big.mkdir(parents=True)
    (big / "config.json").write_text("{}")
    (big / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    name = "tester/big-finetune/diffusion_pytorch_model.safetensors"
    with FakeHub(HUB, tmp_path / "extra") as hub:
        hub.drop_once[name] = 15 << 20
        proc = download(hub_env(tmp_path / "home", hub.url, tmp_path / "hf"), "tester/big-finetune", "-q")
        gets = [served for served in hub.log if served.method == "GET" and served.file == name]
    assert proc.returncode == 0, proc.stderr
    assert [(g.status, g.range, g.body_bytes) for g in gets[:1]] == [(200, None, 15 << 20)]
    resumed_at = int(gets[1].range.removeprefix("bytes=").removesuffix("-"))
    assert len(gets) == 2 and 0 < resumed_at <= 15 << 20
    assert (gets[1].status, gets[1].body_bytes) == (206, len(weights) - resumed_at)
    assert cached(tmp_path / "hf", name).read_bytes() == weights


def test_interrupted_download_goes_on_where_it_stopped(tmp_path):
    vae = "hunyuanvideo-community/HunyuanVideo/vae/diffusion_pytorch_model.safetensors"
    with FakeHub(HUB) as hub:
        env = hub_env(tmp_path / "home", hub.url, tmp_path / "hf")
        hub.fail_status[vae] = 500
        first = download(env, "-q")
        assert_one_line_error(first, ExitCode.NETWORK, "HTTP 500", vae, "run the same command again")
        before = set(hub.content_bytes()) - {vae}

        listing = json.loads(run_fpgen("models", "--json", env=env).stdout)["models"][0]
        assert not listing["complete"] and "hunyuanvideo-community/HunyuanVideo/vae" in listing["missing"]

        del hub.fail_status[vae]
        since = len(hub.log)
        second = download(env, "-q")
        again = set(hub.content_bytes(since))
    assert second.returncode == 0, second.stderr
    assert before and vae in again and not before & again and before | again == set(needed())
    for name, data in needed().items():
        assert cached(tmp_path / "hf", name).read_bytes() == data, name


def _stall_metadata(hub, env):
    hub.stall = "api"


def _gate_hunyuan(hub, env):
    hub.gated["hunyuanvideo-community/HunyuanVideo"] = TOKEN


def _fill_disk(hub, env):
    """huggingface_hub and fpgen read free space through shutil.disk_usage; make it report 1000 bytes."""
    site = Path(env["HF_HOME"]).parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import shutil\n_real = shutil.disk_usage\n"
        "def disk_usage(path):\n    usage = _real(path)\n    return type(usage)(usage.total, usage.total - 1000, 1000)\n"
        "shutil.disk_usage = disk_usage\n"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))


@pytest.mark.parametrize(
    ("args", "setup", "extra_env", "code", "needles"),
    [
        (["nobody/nothing"], None, {}, ExitCode.USAGE, ["the Hub has no model repo nobody/nothing", "hf auth login"]),
        (["framepack-f1", "--revision", "nope"], None, {}, ExitCode.USAGE, ["has no revision 'nope'"]),
        ([], _gate_hunyuan, {}, ExitCode.MODEL_MISSING, ["hunyuanvideo-community/HunyuanVideo needs a Hugging Face login (HTTP 401)", "hf auth login"]),
        ([], _gate_hunyuan, {"HF_TOKEN": "hf_someoneElsesToken"}, ExitCode.MODEL_MISSING, ["token has no access to hunyuanvideo-community/HunyuanVideo (HTTP 403)"]),
        ([], _stall_metadata, {"HF_HUB_ETAG_TIMEOUT": "2"}, ExitCode.NETWORK, ["could not reach the Hub", "ReadTimeout"]),
        ([], None, {"HF_HUB_OFFLINE": "1"}, ExitCode.NETWORK, ["HF_HUB_OFFLINE is set"]),
        (["framepack", "framepack-f1"], _fill_disk, {}, ExitCode.DISK_FULL, ["not enough disk space", "needs 3.7 MB", "1.0 kB is free"]),
    ],
    ids=["repo-404", "revision-404", "gated-401", "gated-403", "hub-silent", "offline", "disk-full"],
)
def test_failure_is_one_line_with_its_exit_code_and_nothing_transferred(args, setup, extra_env, code, needles, tmp_path):
    with FakeHub(HUB) as hub:
        env = hub_env(tmp_path / "home", hub.url, tmp_path / "hf", **extra_env)
        if setup:
            setup(hub, env)
        proc = download(env, *args, "-q")
        assert_one_line_error(proc, code, *needles)
        assert hub.content_bytes() == {}
    assert "someoneElses" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "hf").glob("*/blobs/*"))


def test_gated_repo_with_a_login_token_downloads_and_never_shows_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # what `hf auth login` leaves in HF_HOME
    with FakeHub(HUB, gated={"hunyuanvideo-community/HunyuanVideo": TOKEN}) as hub:
        proc = download(hub_env(home, hub.url, tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert cached(tmp_path / "hf", "hunyuanvideo-community/HunyuanVideo/vae/config.json").is_file()


def test_local_dir_then_generate_with_model_dir_and_no_cache(tmp_path):
    folder, empty_cache = tmp_path / "models", tmp_path / "empty-cache"
    empty_cache.mkdir()
    with FakeHub(HUB) as hub:
        proc = download(hub_env(tmp_path / "home", hub.url, empty_cache), "--local-dir", folder, "-q")
        endpoint = hub.url
    assert proc.returncode == 0, proc.stderr
    for name, data in needed().items():
        assert (folder / name).read_bytes() == data, name
    assert not [p for p in folder.rglob("*") if p.is_file() and any(d in p.as_posix() for d in DECOYS)]

    env = hub_env(tmp_path / "home", endpoint, empty_cache)  # the Hub is gone, the cache is empty
    proc = run_fpgen("generate", GOLDEN / "input.png", *GENERATE, "--model-dir", folder, "-o", tmp_path / "out.mp4", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0 and not any(empty_cache.iterdir())


def test_dry_run_with_revision_plans_and_downloads_nothing(tmp_path):
    commit = fake_commit("lllyasviel/FramePack_F1_I2V_HY_20250503")
    with FakeHub(HUB) as hub:
        proc = download(hub_env(tmp_path / "home", hub.url, tmp_path / "hf"), "framepack-f1", "--revision", commit, "--dry-run", "--json")
        assert hub.content_bytes() == {}
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    expected = golden_files("lllyasviel/FramePack_F1_I2V_HY_20250503", *FRAMEPACK_REPOS[1:])
    assert plan["dry_run"] and plan["download_bytes"] == plan["total_bytes"] == sum(map(len, expected.values()))
    assert {(f["repo"], f["revision"], f["commit"]) for f in plan["files"] if "F1" in f["repo"]} == {("lllyasviel/FramePack_F1_I2V_HY_20250503", commit, commit)}
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").glob("*/blobs/*"))


def test_byte_progress_counts_with_the_libraries_bars_off():
    """HF_HUB_DISABLE_PROGRESS_BARS (set by users on servers, and by fpgen for -q, --json and batch workers) makes
    huggingface_hub pass disable=True to the bar class; fpgen's own progress still hears every byte."""
    from fpgen.download import FileProgress, RemoteFile, _progress_bar

    file = RemoteFile("tester/repo", None, fake_commit("tester/repo"), "weights.safetensors", 300, False)
    events = []
    with _progress_bar(file, events.append)(total=file.size, disable=True) as bar:
        bar.update(120)
        bar.update(180)
    assert events == [FileProgress(file, 120), FileProgress(file, 300)]
