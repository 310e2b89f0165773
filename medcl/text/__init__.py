"""Free text next to the images and signals.

De-identification (:mod:`medcl.text.deid`) and offline text encoders (:mod:`medcl.text.encoders`).
"""
