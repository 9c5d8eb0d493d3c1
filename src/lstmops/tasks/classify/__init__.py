"""The classify task: one class per variable-length multivariate sequence, by an LSTM."""
