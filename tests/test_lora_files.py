"""LoRA files on disk: a folder stands for the LoRA in it everywhere, files are written atomically, a bad file is one clear error."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors.torch import save_file

from fpgen.errors import DiskFullError, ExitCode, InputError
from fpgen.lora import Lora, LoraChoice, LoraModule, load_loras, read_lora, write_lora, write_musubi


def small_lora() -> Lora:
    generator = torch.Generator().manual_seed(0)
    module = LoraModule(torch.randn((2, 8), generator=generator), torch.randn((8, 2), generator=generator), 1.0)
    return Lora({"transformer_blocks.0.attn.to_q": module}, info='{"base_model": "framepack"}')


def test_a_folder_written_by_write_lora_is_a_lora_choice(tmp_path):
    folder = tmp_path / "runs" / "dance"
    written = write_lora(folder / "lora.safetensors", small_lora())
    assert sorted(p.name for p in folder.iterdir()) == ["lora.safetensors"]  # written aside and renamed: nothing else left
    for text, scale in ((str(folder), 1.0), (f"{folder}:0.5", 0.5), (f"{folder}/:-1", -1.0)):
        choice = LoraChoice.parse(text)
        assert choice == LoraChoice(written, scale) and choice.path.is_file()  # what the job checks and records
    [(lora, choice)] = load_loras([LoraChoice.parse(str(folder))])
    assert torch.equal(lora.modules["transformer_blocks.0.attn.to_q"].down, small_lora().modules["transformer_blocks.0.attn.to_q"].down)
    assert lora.info == small_lora().info


def test_a_written_lora_gets_the_mode_of_the_users_new_files(tmp_path):
    """safetensors 0.8 makes owner-only files; fpgen's tensor files follow the umask like its videos, so a shared LoRA stays readable."""
    import os
    import stat

    modes = {}
    for umask in (0o022, 0o077):
        before = os.umask(umask)
        try:
            written = write_lora(tmp_path / f"lora-{umask:o}.safetensors", small_lora())
        finally:
            os.umask(before)
        modes[umask] = stat.S_IMODE(written.stat().st_mode)
    assert modes == {0o022: 0o644, 0o077: 0o600}


def test_a_folder_without_a_lora_is_refused_when_parsed(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no LoRA file"):
        LoraChoice.parse(f"{tmp_path / 'empty'}:0.8")
    assert LoraChoice.parse("missing/lora.safetensors:0.8") == LoraChoice(tmp_path.__class__("missing/lora.safetensors"), 0.8)  # reported where read


def test_a_damaged_lora_is_one_input_error(tmp_path):
    write_lora(tmp_path / "lora.safetensors", small_lora())
    data = (tmp_path / "lora.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.safetensors is damaged.*pass a LoRA \.safetensors file"):
        read_lora(tmp_path / "cut.safetensors")


def test_key_names_from_the_file_reach_the_error_without_escapes(tmp_path):
    save_file({"\x1b]0;pwned\x07evil\x1b[2J.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(InputError) as caught:
        read_lora(tmp_path / "odd.safetensors")
    assert "evil.weight" in str(caught.value) and "\x1b" not in str(caught.value) and "pwned" not in str(caught.value)



def test_writing_a_lora_on_a_full_disk_is_disk_full_and_leaves_nothing(tmp_path, monkeypatch):
    """lora.py writes through fpgen.tensorfile, so ENOSPC is DiskFullError (exit 5), not "unexpected" (exit 1).

    safetensors writes its own temporary file and renames it, so neither /dev/full nor a link reaches it: its writer is made to fail.
    """
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(DiskFullError, match="musubi.safetensors") as caught:
        write_musubi(tmp_path / "musubi.safetensors", small_lora())
    assert caught.value.exit_code == ExitCode.DISK_FULL and list(tmp_path.iterdir()) == []
