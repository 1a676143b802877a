"""Registry Gateway: policy-as-code token authority for Docker/OCI registries."""

__version__ = "0.1.0"
