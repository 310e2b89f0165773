"""Data: manifests and validation, patient-level splits, datasets/loaders, demo data (file formats: :mod:`medcl.readers`)."""
