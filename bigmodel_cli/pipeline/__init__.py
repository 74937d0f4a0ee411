"""Stages run together: quickstart, the whole lifecycle on a sample."""
