"""The commands (train, sweep, sample, eval, export, list): each composes, builds and runs."""
