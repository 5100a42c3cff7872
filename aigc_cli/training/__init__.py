"""The training loop and what it is made of: setup, one optimizer step, periodic work,
evaluation, logging, EMA, precision, RNG, signals, resume and init_from."""
