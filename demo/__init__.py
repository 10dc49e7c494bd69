"""The demo model: its data (data.py), its fresh hub (build.py), its VAE trainer (train_vae.py) and the device commands (train_h200.sh)."""
