"""The forecaster: windows of a multivariate series in, the next ``horizon`` steps of the target out."""
