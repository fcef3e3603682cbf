"""The model: loading, the default model's corpus and training, and its evaluation."""
