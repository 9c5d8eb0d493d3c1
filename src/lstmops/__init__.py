"""lstmops: an orchestrated MLOps pipeline for LSTM sequence models.

Importing the package is cheap on purpose: torch, mlflow, great_expectations and prefect are
imported inside the functions that need them.
"""

__version__ = "0.1.0"
