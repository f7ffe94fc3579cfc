"""Training: the loop, its strategy plumbing, the loss, the optimizer, fine-tuning, the training log."""
