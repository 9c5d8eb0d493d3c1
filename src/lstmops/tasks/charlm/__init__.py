"""The charlm task: a character-level LSTM language model on text."""
