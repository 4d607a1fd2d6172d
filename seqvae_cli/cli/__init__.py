"""The command line: the `seqvae` entry point (main.py), its verbs' apps, the torchrun launcher, sweep reports."""
from seqvae_cli.cli.command import main

__all__ = ["main"]
