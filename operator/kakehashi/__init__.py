"""Kakehashi: a Kubernetes-native ML platform (operator, CLI, SDK, trainer runtime)."""

__version__ = "0.1.0"
GROUP = "kakehashi.dev"
VERSION = "v1alpha1"
