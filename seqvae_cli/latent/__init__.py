"""The latent variable: posteriors q(z|x) and priors p(z) as objects the objective and evaluation use."""
