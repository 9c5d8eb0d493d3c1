"""Where a model runs: SageMaker packaging (``package``), the handlers shipped in the tarball
(``inference``) and the boto3 calls that create or update an endpoint (``sagemaker``)."""
