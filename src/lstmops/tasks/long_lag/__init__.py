"""The long_lag task: the long-time-lag problems of Hochreiter & Schmidhuber (1997)."""
