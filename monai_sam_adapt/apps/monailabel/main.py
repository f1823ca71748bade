"""MONAI Label app folder of monai_sam_adapt (``monailabel start_server --app <this folder> ...``).

The app itself lives in :mod:`monai_sam_adapt.serving.app`; see the README's "Serving" section for the command.
"""

from monai_sam_adapt.serving.app import SAMAdaptApp  # noqa: F401  (the class MONAI Label instantiates)
