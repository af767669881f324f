"""The ``dicom-import`` command line: argument parsing, progress on the console
and one-line errors around the flows, which stay free of terminal concerns."""
