"""The import rules of HealthImaging, written once: what it refuses, what it
imports with a warning, and the reason codes and warning codes that say so.

Pre-flight validation (``tasks.validate``) and the local service
(``emulator.worker.part10``) both apply them, so a file the service imports is never
held back before upload. ``docs/import-rules.md`` lists every rule.
"""
