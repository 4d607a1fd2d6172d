"""The training objective: the ELBO and its variants, and the KL weight's schedule."""
