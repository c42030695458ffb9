"""Real DICOM files written with pydicom, for tests: renditions of real images with the
elements a CR/DX export carries, including fake patient identifiers that must never be shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-8675309"
STUDY_DATE = "20240229"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    window_function: str | None = None,
    rescale: tuple[float, float] | None = None,  # (slope, intercept)
    sop_class: str = DX_STORAGE,
    syntax: str = "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    frames: int = 1,
) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, generate_uid

    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if sop_class == DX_STORAGE else "CR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyDate = STUDY_DATE
    ds.PatientBirthDate = "19700101"
    rows, cols = pixels.shape[-2:] if pixels.ndim == 2 or frames > 1 else pixels.shape[:2]
    ds.Rows, ds.Columns = int(rows), int(cols)
    colour = pixels.ndim == 3 and frames == 1
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if window_function:
        ds.VOILUTFunction = window_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    ds.PixelData = pixels.tobytes()
    if syntax != "1.2.840.10008.1.2.1":
        ds.compress(UID(syntax), pixels)
    ds.save_as(path, enforce_file_format=True)
    return path
