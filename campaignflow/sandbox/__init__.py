"""Wire-compatible provider simulators for the demo, the tests and local development.

Import the simulator you need from its own module (``campaignflow.sandbox.solapi``,
``campaignflow.sandbox.server``); this package imports nothing so that loading it
stays cheap.
"""
