"""What reaches the terminal: text read from files made safe to print, and the libraries' own noise kept off it.

Text read from files (a video's tags, a jobs file, a LoRA's key names) is untrusted: it may hold escape
sequences that retitle the terminal, clear it, rewrite what was printed before or plant a clickable link.
``printable`` removes every one of them, with all other control characters; newlines stay only where the
output is multi-line by design.
"""

from __future__ import annotations

import os
import re
import sys

_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI (7- and 8-bit): cursor moves, clearing, colours
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|\Z)"  # OSC, DCS, SOS, PM, APC: strings up to their terminator
    r"|\x1b[ -/]*[0-~]?",  # the other escapes (charset, keypad, reset...), or a lone ESC
    re.DOTALL,
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # C0 but tab and newline, DEL, C1, bidi overrides


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` without escape sequences or control characters; newlines become spaces unless ``keep_newlines``."""
    text = _CONTROLS.sub("", _SEQUENCES.sub("", str(text)))
    return text if keep_newlines else text.replace("\n", " ")


# Loggers that speak when transformers and diffusers import torchao (they do whenever it is installed, for
# `--quantize`): its CUDA kernels missing on a CPU build, torch's notes on its enums. Nothing a user can act on.
IMPORT_NOISE = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer", "transformers.quantizers.quantizer_torchao")


def library_bars_off() -> None:
    """No loading bars from huggingface_hub, transformers or diffusers in this process from now on.

    The ones already loaded are switched off by their own functions; the environment reaches those that
    load later: huggingface_hub reads its switch, transformers follows huggingface_hub, and diffusers'
    bars are tqdm's, which reads TQDM_DISABLE (and child processes inherit it).
    """
    os.environ.update({"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"})
    switches = {"huggingface_hub.utils": "disable_progress_bars", "transformers.utils.logging": "disable_progress_bar", "diffusers.utils.logging": "disable_progress_bar"}
    for module, switch in switches.items():
        if module in sys.modules:
            getattr(sys.modules[module], switch)()
