"""similarity-api: which customers behave most like this one, and why."""

__version__ = "0.1.0"
