"""``dicom-import view``'s web server: OHIF's prebuilt viewer and a signing
DICOMweb proxy on one loopback origin.

One module per job: :mod:`cli.viewer.ohif` (which OHIF build, where it is,
how ``make viewer`` fetches it), :mod:`cli.viewer.static` (its files and the
``app-config.js`` written per request), :mod:`cli.viewer.gate` (who gets in:
token, cookie, ``Host``), :mod:`cli.viewer.proxy` (the DICOMweb reads it
signs and forwards, and nothing else) and :mod:`cli.viewer.server` (the
three put together on an HTTP server).
"""
