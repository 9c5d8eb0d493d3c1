"""Data stages: ingest (source -> snapshot), validate (GX suite), prepare (split + scale), windows."""
