"""Only what pyproject.toml cannot say: the packages are seqvae_cli's own (found, so that a new sub-package needs no
edit here) plus seqvae_cli.conf, the repository's top-level conf/ mapped into the package (pyproject.toml's
package-dir), which a `find` never returns because no folder seqvae_cli/conf exists in the source tree."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["seqvae_cli", "seqvae_cli.*"]) + ["seqvae_cli.conf"])
