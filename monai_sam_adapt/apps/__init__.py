"""Apps that serve monai_sam_adapt's models: ``monailabel/`` is the MONAI Label app folder (its ``main.py`` names
:class:`monai_sam_adapt.serving.app.SAMAdaptApp`).

Not here: the app's code (:mod:`monai_sam_adapt.serving`), which the folder only points to.
"""
