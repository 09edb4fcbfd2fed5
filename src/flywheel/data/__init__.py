"""Datasets: the plan, the collector, the importer, the manifest and DVC versioning."""
