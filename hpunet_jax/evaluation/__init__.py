"""Evaluation: the LIDC literature's metrics (`metrics`), exact scores against a known
distribution (`exact`), the evaluation's samples over the device mesh (`sampling`), the
scorer families that turn them into scores (`scorers`), the driver that samples and scores
a split (`driver`), the scale analyses with the one table of sampling variants (`scales`),
the text reports (`report`), the figures (`figures`).

Above the model and the data; below training. docs/evaluation.md.
"""
