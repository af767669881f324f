"""The local HealthImaging service (with S3 through moto on the same endpoint)."""
