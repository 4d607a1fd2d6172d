"""The model keys' checks that the sequence models share."""
from __future__ import annotations


from seqvae_cli.errors import SeqvaeError


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise SeqvaeError(f"config error: model.{key}={value!r} is not allowed; expected {allowed} "
                          f"(fix it with the override model.{key}=...)")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0
