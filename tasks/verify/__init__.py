"""Verification: proof that what HealthImaging holds is what the source has.

A COMPLETED job and a success line say HealthImaging took a file; an auditor
of a migration needs more. ``metadata`` reads each image set's metadata once
and checks that every imported file's instance is there, under its study and
series, with the patient, study and series attributes and the number of
frames the source has. ``pixels`` also decodes every source frame and
compares its CRC-32 with the checksum HealthImaging computed of the frame it
stored. Results are report columns (``results``); the checks are plain
functions (``metadata``, ``pixels``), run by ``run``.
"""
