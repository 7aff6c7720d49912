"""Puts molecule/ on sys.path so every scenario's tests can import e2e_helpers."""
