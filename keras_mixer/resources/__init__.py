"""Data files shipped with keras_mixer (ImageNet class names)."""
