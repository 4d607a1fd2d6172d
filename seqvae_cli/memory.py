"""Refusing, before any work, a size whose tensors cannot fit in memory: one line with the estimate and the
largest value that fits, instead of a "can't allocate memory" traceback minutes in.

The estimates are of the few tensors that dominate (measured on CPU with PTB's 10,002-word vocabulary and the
sines series model, then rounded up), not exact accounts: they decide between "fits" and "cannot possibly fit".
"""
from __future__ import annotations

import torch

from seqvae_cli.errors import SeqvaeError

# Refuse what would take more than this share of the memory available now: the rest of the process (model,
# data, Python) and the other programs on the machine need some too.
USABLE_SHARE = 0.75
FLOAT = 4


def available_bytes(device: torch.device) -> int | None:
    """Memory available for new tensors on `device` now (CUDA: free device memory; CPU: MemAvailable from
    /proc/meminfo); None when it cannot be told (then nothing is refused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(key: str, value: int, per_unit: int, fixed: int, what: str, device: torch.device) -> None:
    """Refuse `key`=`value` when fixed + value * per_unit bytes (the estimate for `what`) exceed the usable share
    of the memory available on `device`; the message gives the estimate and the largest value that fits."""
    available = available_bytes(device)
    needed = fixed + value * per_unit
    if available is None or needed <= available * USABLE_SHARE:
        return
    largest = int((available * USABLE_SHARE - fixed) // max(per_unit, 1))
    cure = f"use {key}<={largest}" if largest >= 1 else "it cannot fit even at 1; lower the other sizes"
    raise SeqvaeError(f"{key}={value} needs about {size_text(needed)} of memory for {what}, but the {device.type} has "
                      f"{size_text(available)} available and seqvae uses at most {USABLE_SHARE:.0%} of that; {cure}")


# ------------------------------------------------------------------------------------------- the estimates

def decoding_row_bytes(model, max_len: int, beam: bool) -> int:
    """Bytes per decoded row (a sentence, or one beam of it) of models/decoding.py's strategies: the step's [rows, vocab]
    log-probabilities and their filtered, sorted and masked copies (sampling with top-k/top-p makes ~10 float
    copies, beam search ~5), the decoder state and the tokens so far."""
    z = torch.zeros(1, model.latent_dim) if model.latent_dim else None
    device = next(model.parameters()).device
    state = model.init_decoder_state(z.to(device) if z is not None else None, 1)
    state_bytes = sum(s.numel() * s.element_size() for s in state)
    copies = 5 if beam else 10
    return copies * FLOAT * model.vocab_size + 3 * state_bytes + 2 * 8 * max_len


def forecast_sample_bytes(model, windows: int) -> int:
    """Bytes per forecast sample of SeriesLSTMVAE.forecast over `windows` windows: each sample of each window is a
    decoder row over the window (its inputs, their projection, the RNN's gates and outputs), and the futures are
    sorted for the median and the 5-95% band."""
    t, c = model.seq_len, model.num_channels
    embed = getattr(model.decoder_proj, "out_features", c) if model.decoder_proj is not None else 0
    hidden = model.decoder.hidden_size * model.decoder.num_layers
    return windows * FLOAT * t * (2 * c + embed + 3 * hidden)
