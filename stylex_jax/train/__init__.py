"""Training stages, one module per stage: state, create_state, pure step functions, train_and_evaluate."""
