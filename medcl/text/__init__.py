"""Free text next to the images and signals: de-identification (:mod:`medcl.text.deid`)."""
