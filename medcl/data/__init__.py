"""Data: manifests and validation, patient-level splits, readers, datasets/loaders, demo data."""
