"""fpgen: FramePack image-to-video generation and finetuning."""

__version__ = "0.1.0"

__all__ = ["Settings", "generate_video", "load_models", "__version__"]


def __getattr__(name):
    # torch and diffusers load lazily so that `fpgen --help` and `fpgen --version` stay instant.
    if name in ("generate_video", "load_models"):
        from fpgen import api

        return getattr(api, name)
    if name == "Settings":
        from fpgen.pipeline import Settings

        return Settings
    raise AttributeError(name)
