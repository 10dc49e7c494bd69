"""`fpgen finetune`'s options become the run's TrainConfig by name: every option is a field (or steers the command), with the same default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.main import get_command

from fpgen.cli import app
from fpgen.cli.finetune import COMMAND_OPTIONS, config_from_options
from fpgen.errors import InputError
from fpgen.training.config import TrainConfig


def command_defaults() -> dict:
    return {parameter.name: parameter.default for parameter in get_command(app).commands["finetune"].params}


def test_every_option_is_a_field_or_steers_the_command():
    options, fields = set(command_defaults()), {field.name for field in dataclasses.fields(TrainConfig)}
    assert options - COMMAND_OPTIONS == fields  # a new option needs its field, a new field its option
    assert COMMAND_OPTIONS <= options


def test_the_command_defaults_are_the_config_defaults(tmp_path):
    assert config_from_options(command_defaults() | {"data": tmp_path}) == TrainConfig(data=tmp_path)


def test_options_arrive_converted_and_checked(tmp_path):
    config = config_from_options(command_defaults() | {"data": tmp_path, "output": tmp_path / "run", "size": "480x832", "rank": 8, "full": True})
    assert (config.size, config.rank, config.full, config.output) == ((480, 832), 8, True, tmp_path / "run")
    with pytest.raises(InputError, match="--rank must be at least 1"):
        config_from_options(command_defaults() | {"data": Path("clips"), "rank": 0})
