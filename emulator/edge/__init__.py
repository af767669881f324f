"""The HTTP edge of the local service: what a request meets before the state.

One endpoint for S3 and HealthImaging (``server``), the routes and wire format
built from the botocore model (``urls``, ``request_bodies``, ``validation``,
``responses``), and the door every request passes (``origins``, ``auth``,
``refusals``, the ``admin`` route).

May import ``emulator.state`` and the top-level modules (``config``,
``faults``); never ``emulator.worker``. Nothing in the state or the worker
imports the edge: the wire format changes here alone.
"""
