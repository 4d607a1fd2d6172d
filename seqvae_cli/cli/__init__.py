"""The command line: the `seqvae` entry point (command.py), its verbs' apps, the torchrun launcher, sweep reports."""
from seqvae_cli.cli.command import main

__all__ = ["main"]
