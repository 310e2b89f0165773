"""medcl: contrastive pretraining for medical imaging and signals."""
__version__ = "0.1.0"
