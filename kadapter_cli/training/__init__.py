"""The one training loop and what it needs: configuration, setup (device, precision, optimizer),
batching, objectives, the feature cache, checkpoints and RNG states, logs and trackers."""
