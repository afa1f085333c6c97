"""The probe tests use the shared fixtures of tests/conftest.py (models, HF twins, the clean-model check)."""
