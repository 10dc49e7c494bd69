"""Text read from files reaches the terminal without escape sequences: `fpgen info` on an untrusted video."""

from __future__ import annotations

import re

import pytest
from conftest import moving_gradient

from fpgen.cli.info import info
from fpgen.metadata import describe_video, mp4_tags
from fpgen.terminal import printable
from fpgen.video import concat_mp4, read_tags, write_mp4

HOSTILE = "\x1b]0;pwned\x07 clear:\x1b[2J 8-bit:\x9b31m \x1b]8;;https://evil\x1b\\link\x1b]8;;\x1b\\ bell\x07 cr\r ret\u202eevil [link=https://evil]markup[/link]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b]0;pwned\x07title", "title"),  # OSC ended by BEL: the terminal's title
        ("\x1b]0;pwned\x1b\\title", "title"),  # OSC ended by ST
        ("a\x1b[2Jb\x1b[1;31mc", "abc"),  # CSI: clear screen, colours
        ("a\x9b2Jb\x9d0;x\x9cc", "abc"),  # 8-bit CSI and OSC (C1 controls)
        ("a\x1bcb\x1b(Bc\x1b", "abc"),  # reset, charset, a lone ESC at the end
        ("tab\tnew\nline\r\x00\x7f", "tab\tnew line"),
        ("\u202eevil\u2066", "evil"),  # bidi overrides reorder what is shown
        ("ünïcödé 日本 ✓", "ünïcödé 日本 ✓"),
    ],
)
def test_printable_removes_sequences_and_controls(text, expected):
    assert printable(text) == expected


def test_printable_keeps_newlines_only_when_asked():
    assert printable("one\ntwo\x1b[2J", keep_newlines=True) == "one\ntwo"


@pytest.fixture
def hostile_video(tmp_path):
    """A real MP4 whose tags (the prompt, an option name, the title) hold escape sequences, as a stranger's video may."""
    write_mp4(tmp_path / "seg.mp4", moving_gradient(5, 16, 16))
    description = describe_video({"prompt": HOSTILE, "seed": 7, "\x1b[2Jname": "x"}, "inverted", 5, 16, 16, 1, [1], 1.0)
    concat_mp4([tmp_path / "seg.mp4"], tmp_path / "hostile.mp4", mp4_tags(description))
    assert "\x1b]0;pwned\x07" in read_tags(tmp_path / "hostile.mp4")["title"]
    return tmp_path / "hostile.mp4"


def test_info_prints_no_escape_sequence_from_a_video(hostile_video, capsys):
    info(hostile_video, json_output=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "pwned" not in out and "clear:" in out and "[link=https://evil]markup[/link]" in out  # markup is shown as text


def test_info_on_a_colour_terminal_emits_only_its_own_styles(hostile_video, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    info(hostile_video, json_output=False)
    out = capsys.readouterr().out
    assert "\x1b[1m" in out  # rich's bold: the check below would catch a sequence from the file
    assert re.findall(r"\x1b(?!\[[0-9;]*m)", out) == [] and "]8;" not in out  # no OSC (title, link), no clearing


def test_info_json_escapes_control_characters(hostile_video, capsys):
    info(hostile_video, json_output=True)
    out = capsys.readouterr().out
    assert "\\u001b]0;pwned" in out and "\x1b" not in out and "\x9b" not in out
