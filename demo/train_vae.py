"""Train the demo's tiny AutoencoderKLHunyuanVideo in the hub that ``demo/build.py`` made (fpgen trains only transformers).

``--decoder-only`` trains the decoder alone: the encoder, so the latents, the scaling factor, the training
cache and every transformer trained on them stay valid, and a better decoder lifts the demo at once.
Batches are rendered on the fly by DataLoader workers from the training stills with ``demo/data.py``'s
camera paths and varied looks (nothing is read from disk but the photos): 17-frame windows alternate
with batches of single frames, because generation always encodes its start picture alone. Loss: L1 +
KL (weight 1e-6, as LDM weighs summed losses), AdamW, bf16 autocast on CUDA; the learning rate warms
up for 200 steps, then follows a cosine over ``--steps`` or ``--minutes``, whichever ends first. A checkpoint (safetensors and JSON only) is written every
``--save-every`` steps and when ``--minutes`` run out, so a 10-minute command limit is survivable:
run the same command again and it continues. ``--export`` then sets ``scaling_factor`` to 1/std of
the latents, measures PSNR on windows over the held-out stills and writes the VAE (float16, shards
under 15 MB) into the hub.

Usage: ``python demo/train_vae.py HUB DATA --run RUN [--steps 9000] [--minutes 8.5] [--decoder-only] [--export [--export-dir DIR]]``
(DATA is ``make demo-data``'s folder: its stills/ are read).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo import data  # noqa: E402
from demo.build import HUNYUAN, SHARD  # noqa: E402


LOOK_POOL, LOOK_REUSE = 16, 8  # varied photos each worker keeps; windows per new look


class Windows(torch.utils.data.IterableDataset):
    """Endless (frames, 3, H, W) float windows in [-1, 1] of seeded camera paths over ``stills`` (each worker its own stream),
    the photos varied by ``data.draw_look`` unless ``plain`` (held-out evaluation)."""

    def __init__(self, folder: Path, stills: tuple[str, ...], frames: int, size: int, seed: int, plain: bool = False):
        self.folder, self.stills, self.frames, self.size, self.seed, self.plain = folder, stills, frames, size, seed, plain

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        photos = {}
        varied = []  # a pool of varied photos, one replaced every few windows: a look costs more than a window
        while True:
            still, flip = str(rng.choice(self.stills)), bool(rng.random() < 0.5)
            if (still, flip) not in photos:
                photos[still, flip] = data.load_still(self.folder, still, flip)
            photo = photos[still, flip]
            if not self.plain:
                if len(varied) < LOOK_POOL or rng.random() < 1 / LOOK_REUSE:
                    varied = [*varied, data.apply_look(photo, data.draw_look(rng))][-LOOK_POOL:]
                photo = varied[int(rng.integers(len(varied)))]
            path = data.motion_path(str(rng.choice(data.MOTIONS)), str(rng.choice(list(data.SPEEDS))), self.frames)
            views = data.fit_views(path, (photo.height, photo.width), (self.size, self.size), rng)
            yield torch.from_numpy(data.render(photo, views, (self.size, self.size))).permute(3, 0, 1, 2).float() / 127.5 - 1


def loader(folder: Path, stills, frames: int, size: int, batch: int, seed: int, workers: int, plain: bool = False):
    dataset = Windows(folder, tuple(stills), frames, size, seed, plain)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available()))


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Mean L1 plus ``kl_weight`` times the KL summed over the latents, per pixel value (LDM's weighting of summed losses)."""
    with torch.set_grad_enabled(vae.quant_conv.weight.requires_grad):  # a frozen encoder keeps no graph
        posterior = vae.encode(pixels).latent_dist
    decoded = vae.decode(posterior.sample()).sample
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1 - posterior.logvar.float()).sum()
    return (decoded.float() - pixels.float()).abs().mean() + kl_weight * kl / pixels.numel()


def save(run: Path, vae, optimizer, step: int) -> None:
    from fpgen.tensorfile import save_tensors
    from fpgen.training.checkpoint import _split_optimizer_state

    partial = run / "checkpoint.partial"
    partial.mkdir(parents=True, exist_ok=True)
    save_tensors(partial / "model.safetensors", {k: v.detach().cpu() for k, v in vae.state_dict().items()})
    save_tensors(partial / "optimizer.safetensors", *_split_optimizer_state(optimizer.state_dict()))
    (partial / "state.json").write_text(json.dumps({"step": step}) + "\n")
    final = run / "checkpoint"
    if final.exists():
        for file in final.iterdir():
            file.unlink()
        final.rmdir()
    partial.rename(final)


def resume(run: Path, vae, optimizer) -> int:
    from fpgen.tensorfile import load_tensors
    from fpgen.training.checkpoint import _join_optimizer_state

    folder = run / "checkpoint"
    if not (folder / "state.json").is_file():
        return 0
    vae.load_state_dict(load_tensors(folder / "model.safetensors")[0])
    optimizer.load_state_dict(_join_optimizer_state(*load_tensors(folder / "optimizer.safetensors"), folder / "optimizer.safetensors"))
    return int(json.loads((folder / "state.json").read_text())["step"])


@torch.no_grad()
def export(vae, target: Path, folder: Path, size: int, device: torch.device, rescale: bool) -> dict:
    """scaling_factor = 1/std of the latents (if ``rescale``: the encoder trained); PSNR on held-out windows (17 frames and
    single frames); the float16 VAE into ``target``."""
    vae.eval()
    held = next(loader(folder, data.HELD_OUT, 17, size, 16, seed=12345, workers=0, plain=True)).to(device)
    latents = vae.encode(held).latent_dist.mean
    scaling = 1.0 / latents.float().std().item() if rescale else vae.config.scaling_factor
    psnr = lambda a, b: (10 * torch.log10(4 / ((a.float().clamp(-1, 1) - b.float()) ** 2).mean())).item()  # noqa: E731  (range 2)
    video_psnr = psnr(vae.decode(latents).sample, held)
    image_psnr = psnr(vae.decode(vae.encode(held[:, :, :1]).latent_dist.mean).sample, held[:, :, :1])
    vae.register_to_config(scaling_factor=scaling)
    vae.to(torch.float16).save_pretrained(str(target), max_shard_size=SHARD)
    return {"scaling_factor": scaling, "heldout_psnr_video": video_psnr, "heldout_psnr_first_frame": image_psnr}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hub", type=Path, help="the hub made by demo/build.py (its vae/ is trained and, with --export, replaced)")
    parser.add_argument("data", type=Path, help="make demo-data's folder (its stills/)")
    parser.add_argument("--run", type=Path, required=True, help="folder of the run's checkpoint (continued when it exists)")
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--minutes", type=float, default=8.5, help="stop (with a checkpoint) after this long")
    parser.add_argument("--batch", type=int, default=8, help="17-frame windows per video batch (single-frame batches take 8x as many)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-only", action="store_true", help="freeze the encoder: latents, scaling factor and training caches stay valid")
    parser.add_argument("--export", action="store_true", help="after training: set scaling_factor, measure held-out PSNR, write the VAE into the hub")
    parser.add_argument("--export-dir", type=Path, help="write the exported VAE here instead of into the hub")
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKLHunyuanVideo

    started, device = time.monotonic(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    vae = AutoencoderKLHunyuanVideo.from_pretrained(str(args.hub / HUNYUAN / "vae"), torch_dtype=torch.float32).to(device).train()
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    step = resume(args.run, vae, optimizer)
    stills = tuple(name for name in data.STILLS if name not in data.HELD_OUT)
    folder = args.data / "stills"
    videos = loader(folder, stills, 17, args.size, args.batch, args.seed + step, args.workers)
    images = loader(folder, stills, 1, args.size, 8 * args.batch, args.seed + step + 1, args.workers)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    losses, first = [], step
    while step < args.steps and time.monotonic() - started < 60 * args.minutes:
        pixels = next(videos if step % 2 == 0 else images).to(device, non_blocking=True)
        progress = max(step / args.steps, (time.monotonic() - started) / (60 * args.minutes))
        lr = args.lr * min(1.0, (step - first + 1) / 200) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            loss = vae_loss(vae, pixels, args.kl_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            print(json.dumps({"step": step, "loss": sum(losses[-100:]) / len(losses[-100:]), "lr": lr, "elapsed_s": round(time.monotonic() - started, 1)}), flush=True)
        if step % args.save_every == 0:
            save(args.run, vae, optimizer, step)
    save(args.run, vae, optimizer, step)
    result = {"step": step, "done": step >= args.steps}
    if args.export:
        result.update(export(vae, args.export_dir or args.hub / HUNYUAN / "vae", folder, args.size, device, rescale=not args.decoder_only))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
