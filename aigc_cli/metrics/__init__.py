"""Sample-quality metrics of image models: feature statistics (FID, KID, precision/recall) and
the feature networks they are computed with."""
