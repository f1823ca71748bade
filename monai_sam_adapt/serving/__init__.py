"""Serving through MONAI Label (OHIF, 3D Slicer) with Orthanc as the DICOMweb archive.

Needs the ``monailabel`` extra (``pip install monai_sam_adapt[monailabel]``). Pieces:

- :mod:`.server`: the ASGI app ``monailabel start_server --uvicorn_app monai_sam_adapt.serving.server:app`` runs: MONAI
  Label's own app, made to start under pydicom 3 (:mod:`.compat`), with input errors answered as 4xx and the OHIF
  viewer's sub-folder files served.
- :mod:`.app`: :class:`SAMAdaptApp`, the MONAI Label app (``monai_sam_adapt/apps/monailabel``): every bundle with
  weights as an automatic model, an interactive SAM model, training through the bundles' own ``train.json``.
- :mod:`.infer`, :mod:`.train`, :mod:`.datastore`: its tasks and datastores.
- :mod:`.orthanc`: start Orthanc with DICOMweb on loopback, remote access refused.
"""

from .compat import install_pydicom_bridge

install_pydicom_bridge()  # before any MONAI Label module imports pydicom-seg
