"""Text to tokens: text changes, and the token edits that keep cached ids equal to a fresh tokenization."""
