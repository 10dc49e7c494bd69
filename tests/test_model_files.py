"""Finding a model's files on disk: complete folders only, and the exact command that fetches the rest."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import HUB
from hubcache import fake_commit

from fpgen.download import human_size
from fpgen.errors import InputError, ModelMissingError
from fpgen.hub import find_model, is_complete, model_status
from fpgen.registry import resolve_model


@pytest.fixture
def text_encoder(tmp_path):
    folder = tmp_path / "text_encoder"
    shutil.copytree(HUB / "hunyuanvideo-community/HunyuanVideo/text_encoder", folder)
    return folder


def test_complete_folder_needs_its_config_and_every_indexed_shard(text_encoder):
    assert is_complete(text_encoder)
    shards = sorted(set(json.loads((text_encoder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    (text_encoder / shards[-1]).unlink()
    assert not is_complete(text_encoder)


def test_folder_without_its_config_is_incomplete(text_encoder):
    (text_encoder / "config.json").unlink()
    assert not is_complete(text_encoder)


def test_partial_model_dir_names_what_is_missing_and_the_exact_command(tmp_path):
    repo = "hunyuanvideo-community/HunyuanVideo"
    shutil.copytree(HUB / repo, tmp_path / repo)
    (tmp_path / repo / "vae" / "config.json").unlink()  # as a download cut off inside vae/ leaves it
    status = model_status(resolve_model("framepack-f1"), tmp_path)
    assert status.missing == [f"{repo}/vae", "lllyasviel/FramePack_F1_I2V_HY_20250503", "lllyasviel/flux_redux_bfl/feature_extractor", "lllyasviel/flux_redux_bfl/image_encoder"]
    with pytest.raises(ModelMissingError) as error:
        find_model("framepack-f1", model_dir=tmp_path, revision="v2")
    assert str(error.value).endswith(f"run: fpgen download framepack-f1 --revision v2 --local-dir {tmp_path}")


def test_revision_is_for_hub_models_only(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--revision applies to Hub models"):
        resolve_model(str(tmp_path), revision="main")
    assert resolve_model("framepack", revision="abc").transformer.revision == "abc"
    assert resolve_model("framepack", revision="abc").vae.revision is None


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (2_433_840, "2.4 MB"), (25_750_000_000, "25.8 GB"), (4.3e12, "4300.0 GB")])
def test_human_size(size, text):
    assert human_size(size) == text


def test_revision_selects_the_transformer_snapshot_in_the_cache(offline_cache):
    commit = fake_commit("lllyasviel/FramePackI2V_HY")
    assert find_model("framepack", revision=commit).paths["transformer"].name == commit
    with pytest.raises(ModelMissingError, match=r"\(missing lllyasviel/FramePackI2V_HY\); run: fpgen download framepack --revision v9$"):
        find_model("framepack", revision="v9")
