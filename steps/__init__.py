"""Synesis Pipelines steps: each module is one step of the ModelCar pipeline plus its CLI."""
