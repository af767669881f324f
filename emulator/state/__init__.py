"""Service state and its rules: data stores, import jobs, image sets and
their versions, kept in the ``store`` and changed only through the backend
(``models``) and its image set operations; and the API they answer to
(``service_model``), which the edge and fault injection read too.

Imports neither ``emulator.edge`` nor ``emulator.worker`` (only the
top-level ``config`` and ``faults``), so the rules can be read and tested
without HTTP. One crossing remains: ``models`` starts import jobs through
``emulator.worker.importer``.
"""
