"""Training: the loop, checkpoints and resume, extras (weight averaging, aggressive encoder), several processes."""
