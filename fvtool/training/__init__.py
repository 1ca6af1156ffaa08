"""Training: the config, methods (backbone + objective), the loop, checkpoints and resume."""
