"""The import worker: read an import job's input from S3, check and group
each DICOM file into image sets, store metadata and frames, and write the
job's output folder.

May import ``emulator.state`` (image sets it writes into) and the top-level
modules; never ``emulator.edge``: an import job has no request to answer.
"""
