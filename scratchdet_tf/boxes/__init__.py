"""SSD box math: box ops, priors, matching targets, decoding and NMS. Never imports data, models or training."""
