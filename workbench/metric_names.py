"""The names of the readout metrics (:mod:`workbench.metrics`), in a module light enough for the command line's
help texts: ``--help`` lists them before torch loads."""

DEFAULT_METRIC = "kl"
METRIC_FORMS = "kl, prob:6,7,8,9, logit_diff:9,5, logit:9, rank:9, digits_above:5"
