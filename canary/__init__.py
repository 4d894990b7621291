"""canary: safe canary deployments for search/retrieval configurations."""

__version__ = "0.1.0"
