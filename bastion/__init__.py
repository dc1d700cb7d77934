"""bastion: an SSH bastion that ends standing access."""

__version__ = "0.1.0"
