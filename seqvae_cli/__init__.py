"""seqvae: config-driven VAE experiments (MNIST, text, time series).

`seqvae_cli.load(RUN)` opens a trained run in Python (api.py, docs/api.md). It is imported on first use, so that
`import seqvae_cli` (and `seqvae --help`) does not load torch.
"""

__version__ = "0.1.0"
__all__ = ["load", "Run"]


def __getattr__(name: str):
    if name in __all__:
        from seqvae_cli import api
        return getattr(api, name)
    raise AttributeError(f"module 'seqvae_cli' has no attribute {name!r}")
