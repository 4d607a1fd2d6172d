"""Time-series data: fixed-length windows for the series VAE; one file per reader/dataset."""
