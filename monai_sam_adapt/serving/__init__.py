"""Serving through MONAI Label (OHIF, 3D Slicer) with Orthanc as the DICOMweb archive.

Needs the ``monailabel`` extra (``pip install monai_sam_adapt[monailabel]``). Start it with
``python -m monai_sam_adapt.serving --studies ...`` (:mod:`.__main__`, the command built by :mod:`.launch`). Pieces, one
job each:

- :mod:`.server` (+ :mod:`.compat`): the ASGI app MONAI Label runs: its own app, made to start under pydicom 3, with
  input errors answered as 4xx and the OHIF viewer's sub-folder files served.
- :mod:`.app`: :class:`SAMAdaptApp`, the MONAI Label app (``monai_sam_adapt/apps/monailabel``).
- :mod:`.bundle_task`: a bundle as an automatic model (:class:`BundleSegmentationTask`); :mod:`.bundle_training`:
  training it on the datastore (:class:`BundleTrainingTask`); :mod:`.interactive`: clicks and boxes on the frozen
  SAM; :mod:`.inputs`: reading a request's files; :mod:`.datastore`: datastores that refuse bad uploads and write
  DICOM SEG; :mod:`.errors`: the 4xx error; :mod:`.guard`: what a request may name, send and cost (identifiers
  confined, uploads bounded and removed, remote clients only with authentication, inference time limit).
- :mod:`.orthanc`: start Orthanc with DICOMweb on loopback, remote access refused.
- :mod:`.demo`: a throw-away stack for demos, benchmarks and tests (a server on a free loopback port, DICOM upload,
  OHIF screenshots).

Not here: the bundle contract (:mod:`monai_sam_adapt.bundle`).
"""

from .compat import install_pydicom_bridge

install_pydicom_bridge()  # before any MONAI Label module imports pydicom-seg
