"""Metrics for classifiers, generators and explanations."""
