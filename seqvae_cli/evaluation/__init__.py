"""Evaluation: the metrics of a split (bounds, IW-NLL, active units, MI) and anomaly scores for series."""
