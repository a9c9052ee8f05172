"""Raw data to samples: the input contract, validation and quarantine, the
sessionized COURIER samples, and the synthetic marketplace."""
