"""Training math, no I/O: states, optimisers, losses, ADA augmentation and the pure step functions (stages/ runs them)."""
