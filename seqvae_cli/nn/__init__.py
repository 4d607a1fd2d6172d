"""Network building blocks the models share: MLP stacks, RNN encoder/decoder, fast CPU kernels."""
