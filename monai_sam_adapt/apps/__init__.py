"""Apps that serve monai_sam_adapt's models (``monailabel``: the MONAI Label app folder)."""
