"""Training: losses, schedule and the (DDP-capable, resumable) loop."""
