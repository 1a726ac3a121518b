"""Training, evaluation and the `uqserve` command (`training.cli`)."""
