"""Training: the segmentation loss (``convunext.training.losses``), recipes, schedules and the trainer."""
