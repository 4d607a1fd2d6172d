"""Data modules, one file per dataset: MNIST (mnist.py), text (text.py), time series (series/)."""
