"""Finetuning FramePack on your own videos (``fpgen finetune``).

- ``config``: the settings of a run, checked once, saved as ``run.json`` for ``--resume``.
- ``data``: finding clips and captions, reading and bucketing the videos.
- ``cache``: VAE latents and text/image embeddings on disk, keyed by what they were made from.
- ``samples``: training samples (a section's window and its packed history, by ``fpgen.packing``),
  batching and the deterministic data order.
- ``objective``: timestep sampling and the flow-matching loss.
- ``adapters``: LoRA through peft, and what is trained in a full finetune.
- ``events``: what a run reports, and ``RunLog``, the one object that records it (main process only).
- ``setup``: precision and placement, the cached data, the trainee (model, optimizer, schedule).
- ``checkpoint``: the run folder, and checkpoints of tensors and JSON only (never pickles).
- ``stopping``: Ctrl-C and SIGTERM: stop at the next safe point, or at once on the second.
- ``loop``: ``train()``, the accelerate loop: steps, logs, evaluation and validation videos.
"""
