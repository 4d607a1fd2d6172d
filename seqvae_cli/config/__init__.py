"""The config: every key's rule (rules.py) and what is decided at run time (runtime.py: resolvers, device)."""
