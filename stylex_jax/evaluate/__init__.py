"""Metrics for classifiers, generators and explanations (fidelity scorecard, shortcut experiment); features and
classifiers are passed in as arrays or callables."""
