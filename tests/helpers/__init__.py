"""Test helpers: tiny dataset trees built in code, shared by unit and integration tests."""
