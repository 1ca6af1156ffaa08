"""CLI commands, one module per stage; each exposes `register(app)` and stays a thin wrapper."""
