"""Finetuning FramePack on your own videos (``fpgen finetune``).

- ``config``: the settings of a run, checked once, saved as ``run.json`` for ``--resume``.
- ``data``: finding clips and captions, reading and bucketing the videos.
- ``cache``: VAE latents and text/image embeddings on disk, keyed by what they were made from.
- ``samples``: training samples (a section's window and its packed history, by ``fpgen.packing``),
  batching and the deterministic data order.
- ``objective``: timestep sampling and the flow-matching loss.
- ``adapters``: LoRA through peft, and what is trained in a full finetune.
- ``trainer``: the accelerate loop, checkpoints, logs, evaluation and validation videos.
"""
