"""The demo's VAE trainer (demo/train_vae.py): ``--decoder-only`` keeps the latents, so the transformers trained on them stay valid."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from fpgen.registry import DEMO_FOLDER
from test_demo_data import write_stills

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where demo/ lives
from demo import train_vae  # noqa: E402
from demo.build import HUNYUAN  # noqa: E402


def vae_tensors(folder: Path) -> dict:
    return {name: tensor for shard in sorted(folder.glob("*.safetensors")) for name, tensor in load_file(shard).items()}


def test_decoder_only_training_leaves_the_encoder_and_scaling_and_resumes(tmp_path, capsys):
    hub = tmp_path / "hub"
    shutil.copytree(DEMO_FOLDER / "vae", hub / HUNYUAN / "vae")
    write_stills(tmp_path / "data")
    common = [str(hub), str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--decoder-only", "--batch", "1", "--size", "32", "--workers", "0", "--lr", "1e-2"]
    train_vae.main([*common, "--steps", "2"])
    train_vae.main([*common, "--steps", "2", "--export", "--export-dir", str(tmp_path / "out")])  # resumes at step 2: nothing left but the export
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    before, after = vae_tensors(hub / HUNYUAN / "vae"), vae_tensors(tmp_path / "out")
    encoder = [name for name in before if name.startswith(("encoder.", "quant_conv."))]
    decoder = [name for name in before if name not in encoder]
    assert encoder and all((before[name] == after[name]).all() for name in encoder), "the encoder changed"
    changed = sum(not (before[name] == after[name]).all() for name in decoder)
    assert changed > len(decoder) // 2, f"only {changed} of {len(decoder)} decoder tensors trained"
    scaling = [json.loads((folder / "config.json").read_text())["scaling_factor"] for folder in (hub / HUNYUAN / "vae", tmp_path / "out")]
    assert scaling[0] == scaling[1] == result["scaling_factor"]
    checkpoint = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert result["step"] == 2 and all((checkpoint[name].half() == after[name]).all() for name in decoder), "the export is not the resumed checkpoint"
    assert 5 < result["heldout_psnr_video"] < 60
