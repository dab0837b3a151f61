"""license-keeper: keeps the Kong Enterprise license from Konnect safe in a Kubernetes Secret."""

__all__ = ["__version__"]

__version__ = "0.1.0"
