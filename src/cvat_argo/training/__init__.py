"""Training with TF Model Garden: the experiment config a run trains with, and Model Garden fixes."""
