"""Helpers the test folders share: fixtures' building blocks, the engine's model and job runner, the MySQL,
change-capture, simulator, chart, image and exporter helpers. Fixtures themselves stay in the conftest.py
files; a test imports a helper from here, never from another folder's test module or conftest."""
