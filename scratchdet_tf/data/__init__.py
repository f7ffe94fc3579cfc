"""Dataset readers, the synthetic shapes dataset, SSD augmentation and the tf.data pipeline."""
