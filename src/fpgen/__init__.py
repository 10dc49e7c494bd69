"""fpgen: FramePack image-to-video generation and finetuning."""

from fpgen._version import __version__

__all__ = ["Settings", "generate_video", "load_models", "resume_video", "__version__"]


def __getattr__(name):
    # The facade loads on first use (it imports torch and diffusers), so that `fpgen --help` stays instant.
    if name in ("Settings", "generate_video", "load_models", "resume_video"):
        from fpgen import api

        return getattr(api, name)
    raise AttributeError(name)
